"""``clipviz explain``: every image in turn, its files written, its table printed; failures at the end.

    inputs (images, prompts, model) ─► OutputPlan.check ─► load_model
        ─► per image: clipviz.explain(...) ─► render (overlay / figures) ─► table on stdout
"""

import json
import os
import sys

from .. import progress
from ..errors import ClipvizError
from ..maps import peak_xy
from ..outputs import refuse_existing
from ..suffixes import is_video
from .inputs import check_prompts, load_model, model_name, split_inputs
from .plan import OutputPlan, once_each
from .policy import each_image, one_line, report_failures


def run(args):
    """Explain each image in turn, write its files, print its table; failures listed at the end."""
    images, prompts = once_each(*split_inputs(args.inputs, args.image, args.images, args.prompt))
    videos = [path for path in images if is_video(path)]
    if videos:
        if len(images) > 1:
            raise ClipvizError(f"explain one video per run, without images ({len(images)} files given)")
        from .video import run_video
        return run_video(args, videos[0], prompts)
    name = model_name(args.model)
    if args.html:
        from .report import run_html_report
        return run_html_report(args, images, prompts, name)
    # a named method is checked before anything heavy loads; without one, the model's family picks it
    method, options = method_and_options(args) if args.method is not None else (None, None)
    plan = OutputPlan(args.out, images, prompts, args.format, args.figure, args.layers, args.heads, args.force,
                      args.against)
    plan.check(len(images))
    check_prompts(prompts + ([args.against] if args.against else []))
    from ..render import colormap_table

    colormap_table(args.cmap)  # an unknown --cmap fails here, before the model loads
    model = load_model(name, args.device, args.activation)
    if method is None:
        from ..methods import default_method
        args.method = default_method(model)
        method, options = method_and_options(args)
    from ..explanation import explain

    results, written = [], []
    show = not args.quiet and not args.json

    def one(index, image):
        exp = explain(model, image, prompts, method=method, against=args.against, **options)
        files = _write_outputs(exp, plan, index, args)
        written.extend(files)
        if args.json:
            results.append({**exp.to_dict(), "image": image, "files": [str(f) for f in files]})
        if show:
            bar.write(_explain_table(exp, image, files), file=sys.stdout)

    enabled = len(images) > 1 and not args.quiet and sys.stderr.isatty()
    with progress.bar(len(images), "image", enabled) as bar:
        failures = each_image(images, one, bar)
    if args.json:
        json.dump({"model": name, "method": args.method, "prompts": prompts, "against": args.against,
                   "results": results, "failures": [{"image": i, "error": e} for i, e in failures],
                   "files": [str(f) for f in written]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif show and len(images) > 1:
        print(f"{len(written)} files written to {plan.folder}/ ({len(images) - len(failures)} of {len(images)} images)")
    return report_failures(failures, len(images))


def method_and_options(args):
    """The Method named by ``args.method`` and its options from the flags (``--start-layer``,
    ``--layers``), checked, and ``--against`` with it (a contrast needs a prompt-specific method)."""
    from ..explanation import check_contrast
    from ..methods import get_method

    method = get_method(args.method)
    options = {}
    if args.start_layer is not None:
        options["start_layer"] = args.start_layer
    elif getattr(args, "layers", False) and "start_layer" in method.options:
        options["start_layer"] = 0  # a strip needs every block
    method.check_options(options)
    check_contrast(method, getattr(args, "against", None))
    return method, options


def _write_outputs(exp, plan, index, args):
    """Draw and save image ``index``'s planned files (atomically, never over an input); their paths."""
    from .. import render

    for wanted, stack, what, methods in ((plan.layers, exp.layer_maps, "per-block maps for --layers", "relevance or rollout"),
                                         (plan.heads, exp.head_maps, "per-head maps for --heads", "relevance or attention")):
        if wanted and stack is None:  # checked before anything of the image is written
            raise ClipvizError(f"method {exp.method!r} gives no {what}; use --method {methods}")
    written = []
    style = dict(cmap=args.cmap, alpha=args.alpha)
    for kind, prompt, path in plan.files(index):
        refuse_existing([path], args.force)  # planned as new; refuse if something appeared there since
        if kind == "overlay":
            render.save_overlay(path, exp.photo, exp.maps[prompt], **style, protect=plan.inputs, force=args.force)
        else:
            figure = (render.explanation_figure(exp, **style) if kind == "figure" else
                      render.layer_strip(exp, prompt, **style) if kind == "layers" else
                      render.head_grid(exp, prompt, **style))
            render.save_figure(figure, path, dpi=args.dpi, protect=plan.inputs, force=args.force)
        written.append(path)
    return written


def _explain_table(exp, image, files):
    """The printed block for one image: a row per prompt (score, prob, peak), tokens, files."""
    prompts = [one_line(p) for p in exp.prompts]
    width = max(len("prompt"), *(len(p) for p in prompts))
    against = f", against \"{one_line(exp.against[0])}\"" if exp.against else ""
    rows = [f"{one_line(image)}  ({exp.method}{against})"]
    if exp.against:  # the map explains S(prompt) − S(against), S = logit_scale · cosine
        rows.append(f"  {'prompt':<{width}}  {'S(prompt)':>9}  {'S(against)':>10}  {'difference':>10}  "
                    f"{'p(prompt|pair)':>14}  peak (x, y)")
    else:
        rows.append(f"  {'prompt':<{width}}  {'score':>7}  {'prob':>6}  peak (x, y)")
    for t, prompt in enumerate(prompts):
        peak = "-" if peak_xy(exp.maps[t]) is None else tuple(peak_xy(exp.maps[t]))
        if exp.against:
            c = exp.contrast()[t]
            rows.append(f"  {prompt:<{width}}  {c['S_prompt']:9.3f}  {c['S_against']:10.3f}  "
                        f"{c['S_difference']:+10.3f}  {exp.probs[t]:14.1%}  {peak}")
        else:
            rows.append(f"  {prompt:<{width}}  {exp.scores[t]:+7.4f}  {exp.probs[t]:6.1%}  {peak}")
    if exp.text_relevance is not None:
        rows.append("  text tokens:")
        rows += [f"    {tokens_text(tokens, weights)}" for tokens, weights in zip(exp.text_tokens, exp.text_relevance)]
    rows += [f"  -> {f}" for f in files]
    return "\n".join(rows)


def tokens_text(tokens, weights):
    """Coloured tokens in a terminal (render.text_tokens_ansi), else 'token(0.42)' pairs."""
    tokens = [one_line(token) for token in tokens]
    if sys.stdout.isatty() and not os.environ.get("NO_COLOR"):
        from ..render import text_tokens_ansi
        return text_tokens_ansi(tokens, weights)
    top = max((float(w) for w in weights), default=0.0) or 1.0
    return " ".join(f"{token}({float(w) / top:.2f})" for token, w in zip(tokens, weights))
