"""Test helpers shared by several test modules."""


class DLPackOnly:
    """A foreign tensor: exposes only the DLPack protocol (like torch or mlx)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kw):
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()
