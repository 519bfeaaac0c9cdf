"""Tiny name -> factory registries (algorithms, backbones, data sources, ...)."""

from tfmetanas import errors


class Registry:
    """Maps names to objects; lookups of unknown names list the valid ones.

    Example:
      backbones = Registry("backbone")

      @backbones.register("conv4")
      def conv4(...): ...

      backbones.get("conv4")
    """

    def __init__(self, kind):
        self.kind = kind
        self._entries = {}

    def register(self, name, value=None):
        """Registers `value` under `name`; usable as a decorator."""

        def _add(v):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice.")
            self._entries[name] = v
            return v

        return _add if value is None else _add(value)

    def get(self, name):
        try:
            return self._entries[name]
        except KeyError:
            raise errors.ConfigError(
                f"Unknown {self.kind} {name!r}; valid names are: {', '.join(sorted(self._entries))}."
            ) from None

    def names(self):
        return sorted(self._entries)

    def __contains__(self, name):
        return name in self._entries
