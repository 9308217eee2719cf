"""``clipviz models``: per registered name, whether its weights are on this machine and from where."""

import json
import sys

from .policy import EXIT_OK


def run(args):
    """Per registered name: whether its weights are on this machine, and where a load would take
    them from (the first local source, else the downloads of clipviz.sources in order)."""
    from ..hub import available_models, cache_dir, model_info
    from ..sources import locate, sources

    rows = []
    for name in available_models():
        entry = model_info(name)
        found = locate(entry)
        if found is not None:
            status = "bundled" if found.label == "bundled" else "cached"
            where = f"{found.label} {found.location}"
        else:
            downloads = [s for s in sources(entry) if not s.local]
            status = "download on first use" if downloads else "missing"
            where = ", then ".join(f"{s.label} {s.brief}" for s in downloads)
        rows.append({"name": name, "status": status, "present": found is not None, "from": where,
                     "description": entry.description})
    from ..adapters import LIBRARY_SPECS

    specs = [{"spec": spec, "description": description} for spec, description in LIBRARY_SPECS]
    if args.json:
        json.dump({"models": rows, "specs": specs, "cache_dir": str(cache_dir())}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return EXIT_OK
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['status']:<21}  {r['description']}\n{'':<{width}}  from: {r['from']}")
    print("\nloaded by their own library (any architecture and weights of theirs, e.g.):")
    for spec in specs:
        print(f"  {spec['spec']:<40}  {spec['description']}")
    print(f"\ncache: {cache_dir()}  (also: a checkpoint path, 'openclip:ARCH/PRETRAINED', 'hf:REPO_ID', "
          "'random:ARCH'); 'clipviz download NAME' fetches ahead of time")
    return EXIT_OK
