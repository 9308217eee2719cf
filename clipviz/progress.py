"""The one progress bar: tqdm on stderr, for images of a CLI run, benchmark scenes and downloads.

tqdm is a plain dependency (it draws correctly in terminals, pipes and notebooks, and rate-limits
its redraws); it is imported only when a bar is made, so start-up stays fast.
"""

import sys


def bar(total, unit, enabled=True, desc=None, stream=None, **options):
    """A tqdm bar of ``total`` steps of ``unit`` on ``stream`` (default stderr); drawn only when
    ``enabled``. Use it as a context manager; ``bar.update(n)`` advances it and
    ``bar.write(text, file=sys.stdout)`` prints a line without tearing it (also when not drawn).
    ``options`` go to tqdm (e.g. unit_scale=True for bytes)."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=stream or sys.stderr, disable=not enabled,
                dynamic_ncols=True, **options)
