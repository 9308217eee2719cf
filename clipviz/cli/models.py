"""``clipviz models``: the registered model names, each marked bundled, cached or to download."""

import json
import sys

from .policy import EXIT_OK


def run(args):
    from ..hub import available_models, cache_dir, model_info

    rows = []
    for name in available_models():
        entry = model_info(name)
        if entry.path is not None and entry.path.is_file():
            status = "bundled"
        elif entry.url is not None and (cache_dir() / entry.url.rstrip("/").split("/")[-1]).is_file():
            status = "cached"
        else:
            status = "download on first use" if entry.url else "missing"
        rows.append({"name": name, "status": status, "description": entry.description})
    if args.json:
        json.dump({"models": rows, "cache_dir": str(cache_dir())}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return EXIT_OK
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['status']:<21}  {r['description']}")
    print(f"\ncache: {cache_dir()}  (also: a checkpoint path, 'openclip:ARCH/PRETRAINED', 'hf:REPO_ID', 'random:ARCH')")
    return EXIT_OK
