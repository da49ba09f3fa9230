"""Stack files -> one input item per plane (or window), so every plane is segmented, batched and resumed
like an image of its own.

A plane's stem is ``<stem>_p0003`` (``_w00012`` for a raster's windows); its per-image JSON records the
plane (``"plane": {"index", "count", "stem"}``) so the stack writers group the planes of one file back
together. Files that are not stacks (and files whose header cannot be read: loading them reports why)
stay one item each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from masklab.errors import ImageLoadError
from masklab.io.images import probe_stack
from masklab.io.inputs import InputItem
from masklab.io.planes import Plane, ReadOptions

__all__ = ["expand_planes"]


def expand_planes(items: Sequence[InputItem], *, options: ReadOptions | None = None, max_pixels: int | None = None) -> list[InputItem]:
    """Each stack item becomes its planes (``options.planes`` of them when given; out-of-range indices
    are an error naming the file's plane count); other items are returned as they are."""
    opts = options or ReadOptions()
    out: list[InputItem] = []
    for item in items:
        info = None
        if item.url is None and item.path.is_file():
            try:
                info = probe_stack(item.path, options=opts, max_pixels=max_pixels)
            except ImageLoadError:
                info = None  # loading the item reports the reason as a per-file failure
        if info is None:
            out.append(item)
            continue
        wanted = range(info.count) if opts.planes is None or info.windows is not None else opts.planes
        bad = [i for i in wanted if i >= info.count]
        if bad:
            from masklab.errors import UsageError

            raise UsageError(f"--planes {bad[0]}: {item.path} has {info.count} planes (0..{info.count - 1})")
        tag = "w" if info.windows is not None else "p"
        digits = max(4, len(str(info.count - 1)))
        for i in wanted:
            window, keep = info.windows[i] if info.windows is not None else (None, None)
            plane = Plane(index=i, count=info.count, stem=item.stem, window=window, keep=keep, intensity=info.intensity)
            stem = item.stem if info.count == 1 else f"{item.stem}_{tag}{i:0{digits}d}"
            out.append(dataclasses.replace(item, stem=stem, plane=plane))
    return out
