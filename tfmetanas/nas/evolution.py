"""Evolutionary and random architecture search under a FLOPs (MACs) budget.

The evolutionary algorithm of SUMNAS (Ha et al., ICLR 2022, Appendix,
Algorithm 2), which follows SPOS (Guo et al., arXiv:1904.00420, Section 3.4):
a population of P architectures satisfying the constraint ``cost(a) <= M``
evolves for G generations; each generation makes C offspring, half by
mutation (each choice of a parent drawn from the population is resampled with
probability p) and half by uniform crossover of two parents; offspring that
break the constraint or were already seen are redrawn; the union of
population and offspring is cut back to its top P.

The scoring function is anything ``arch -> float`` (higher is better): a
supernet's validation accuracy after BN recalibration, or a tabular oracle.
Every distinct architecture scored is one *query* (repeats are cached and
free); the search records the query history so that studies can ask how many
queries were needed to reach a target. Random search (uniform samples that
satisfy the constraint) is the baseline.
"""

import dataclasses

import numpy as np

from tfmetanas import errors


class QueryBudgetExhausted(Exception):
    """Internal: the query budget or a stop condition ended the search."""


@dataclasses.dataclass
class SearchResult:
    """Best architecture, its score, and the query history (in order)."""

    best_arch: tuple
    best_score: float
    history: list  # [(arch, score)] of every distinct query, in order
    stopped_early: bool = False

    @property
    def num_queries(self):
        return len(self.history)

    def to_dict(self):
        return {"best_arch": list(self.best_arch), "best_score": float(self.best_score),
                "num_queries": self.num_queries, "stopped_early": self.stopped_early}


class _Scorer:
    """Caches scores, counts distinct queries, applies budget and stop rule."""

    def __init__(self, score_fn, max_queries, stop_fn):
        self.score_fn, self.max_queries, self.stop_fn = score_fn, max_queries, stop_fn
        self.cache, self.history = {}, []
        self.stopped_early = False

    def __call__(self, arch):
        if arch in self.cache:
            return self.cache[arch]
        if self.max_queries is not None and len(self.history) >= self.max_queries:
            raise QueryBudgetExhausted
        score = float(self.score_fn(arch))
        self.cache[arch] = score
        self.history.append((arch, score))
        if self.stop_fn is not None and self.stop_fn(arch, score):
            self.stopped_early = True
            raise QueryBudgetExhausted
        return score

    def result(self):
        if not self.history:
            raise errors.ConfigError("The search made no query: check the budget and constraint.")
        arch, score = max(self.history, key=lambda item: item[1])
        return SearchResult(arch, score, list(self.history), self.stopped_early)


def _random_valid(rng, num_layers, num_choices, constraint, max_tries):
    for _ in range(max_tries):
        arch = tuple(int(a) for a in rng.integers(0, num_choices, num_layers))
        if constraint is None or constraint(arch):
            return arch
    raise errors.ConfigError(
        f"No architecture satisfying the constraint in {max_tries} random draws: the FLOPs "
        "limit (search.max_macs) is probably below the smallest sub-model."
    )


def evolutionary_search(score_fn, num_layers, num_choices, *, generations=20, population=50,
                        offspring=50, mutation_prob=0.1, constraint=None, seed=0,
                        max_queries=None, stop_fn=None, max_tries=1000):
    """SUMNAS Algorithm 2: evolutionary search over a discrete space.

    Args:
      score_fn: ``arch tuple -> float``, higher is better.
      num_layers, num_choices: the space (choices per layer/edge).
      generations: G.
      population: P, the number kept after each generation.
      offspring: C, new architectures per generation (half mutation, half crossover).
      mutation_prob: p, per-choice resampling probability.
      constraint: ``arch -> bool`` (e.g. ``macs(arch) <= M``), or None.
      seed: numpy random seed.
      max_queries: stop after this many distinct evaluations (None: no limit).
      stop_fn: ``(arch, score) -> bool``; stop as soon as it is true.
      max_tries: redraws allowed per offspring before giving up.

    Returns:
      A `SearchResult`.

    References: Ha et al., ICLR 2022, Algorithm 2; Guo et al.,
      arXiv:1904.00420, Section 3.4.
    """
    if population < 2 or offspring < 1 or generations < 0 or not 0 <= mutation_prob <= 1:
        raise errors.ConfigError(
            f"Bad evolution settings: population={population} (>= 2), offspring={offspring} "
            f"(>= 1), generations={generations} (>= 0), mutation_prob={mutation_prob} (in [0, 1])."
        )
    rng = np.random.default_rng(seed)
    scorer = _Scorer(score_fn, max_queries, stop_fn)
    seen = set()

    def fresh(make):
        for _ in range(max_tries):
            arch = make()
            if arch not in seen and (constraint is None or constraint(arch)):
                seen.add(arch)
                return arch
        return None

    try:
        pop = []
        while len(pop) < population:
            arch = fresh(lambda: _random_valid(rng, num_layers, num_choices, constraint, max_tries))
            if arch is None:
                break
            pop.append((arch, scorer(arch)))
        for _ in range(generations):
            parents = [a for a, _ in pop]

            def mutate(parents=parents):
                parent = parents[rng.integers(len(parents))]
                mask = rng.random(num_layers) < mutation_prob
                new = rng.integers(0, num_choices, num_layers)
                return tuple(int(n) if m else int(p) for p, m, n in zip(parent, mask, new))

            def crossover(parents=parents):
                i, j = rng.choice(len(parents), 2, replace=False)
                take = rng.random(num_layers) < 0.5
                return tuple(int(a) if t else int(b) for a, b, t in zip(parents[i], parents[j], take))

            children = []
            for c in range(offspring):
                arch = fresh(mutate if c < offspring // 2 or len(parents) < 2 else crossover)
                if arch is not None:
                    children.append((arch, scorer(arch)))
            pop = sorted(pop + children, key=lambda item: -item[1])[:population]
    except QueryBudgetExhausted:
        pass
    return scorer.result()


def random_search(score_fn, num_layers, num_choices, *, num_samples=1000, constraint=None,
                  seed=0, stop_fn=None, max_tries=1000):
    """Random search baseline: distinct uniform samples satisfying `constraint`.

    Args:
      score_fn, num_layers, num_choices, constraint, seed, stop_fn, max_tries:
        as in `evolutionary_search`.
      num_samples: distinct architectures to score (the query budget).

    Returns:
      A `SearchResult`.
    """
    rng = np.random.default_rng(seed)
    scorer = _Scorer(score_fn, num_samples, stop_fn)
    total = num_choices**num_layers
    repeats = 0
    try:
        while len(scorer.history) < min(num_samples, total) and repeats < 100 * max_tries:
            arch = _random_valid(rng, num_layers, num_choices, constraint, max_tries)
            # Repeats are free; a long run of them means the valid set is used up.
            repeats = repeats + 1 if arch in scorer.cache else 0
            scorer(arch)
    except QueryBudgetExhausted:
        pass
    return scorer.result()
