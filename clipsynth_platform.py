"""`clipsynth_platform` from the source tree: the package is the sibling folder `platform/`.

An installed copy (the image's editable install, a wheel) maps the import name to its own `platform/` through a
finder that Python consults only after sys.path. `ray job submit --working-dir .` puts the uploaded folder on
sys.path of the job and of every worker, and finds `clipsynth_core/` there; without this file it would not find
`clipsynth_platform` there, and the job would run the uploaded core with the image's platform. Setting `__path__`
makes this module a package whose submodules (`clipsynth_platform.ingest`, ...) load from the folder beside it.
`platform/` itself keeps no `__init__.py`: that would shadow the standard library's `platform`.
"""

from pathlib import Path

__path__ = [str(Path(__file__).resolve().with_name("platform"))]
