"""``clipviz demo``: one synthetic scene, prompts naming its objects, a titled figure, offline;
says whether each map's peak lands on the named object."""

import json
import sys
from pathlib import Path

from ..errors import ClipvizError
from ..maps import peak_xy
from ..outputs import check_target, refuse_existing
from ..suffixes import FIGURE_SUFFIXES
from .inputs import load_model, model_name
from .parser import FIGURE_FORMATS
from .policy import EXIT_OK


def run(args):
    out = Path(args.out)
    if out.suffix.lower().lstrip(".") not in FIGURE_FORMATS:
        raise ClipvizError(f"--out {out}: the demo writes a figure; end the name in .png, .pdf or .svg")
    check_target(out, FIGURE_SUFFIXES)  # folder writable (created with the file), not a folder itself
    refuse_existing([out], args.force)
    name = model_name(args.model)
    model = load_model(name, args.device, args.activation)
    from ..methods import default_method

    args.method = args.method or default_method(model)
    from ..explanation import explain
    from ..render import save_figure
    from ..synth import object_prompt, scene_from_index

    scene = scene_from_index(args.seed, 0, n_objects=(2, 3))
    prompts = [object_prompt(o.shape, o.colour) for o in scene.objects]
    exp = explain(model, scene.image, prompts, method=args.method)
    peaks = [peak_xy(m) for m in exp.maps]
    hits = [p is not None and bool(mask[p[1], p[0]]) for p, mask in zip(peaks, scene.masks)]
    save_figure(exp.figure(), out, dpi=args.dpi, force=args.force)
    if args.json:
        json.dump({**exp.to_dict(), "model": name, "seed": args.seed, "peak_on_object": hits, "files": [str(out)]},
                  sys.stdout, indent=1)
        sys.stdout.write("\n")
        return EXIT_OK
    print(f"model {name}, scene {args.seed}, method {args.method}")
    width = max(len(p) for p in prompts)
    for t, prompt in enumerate(prompts):
        print(f"  {prompt:<{width}}  prob {exp.probs[t]:6.1%}  peak {tuple(peaks[t])} "
              f"on the object: {'yes' if hits[t] else 'no'}")
    print(f"-> {out}")
    return EXIT_OK
