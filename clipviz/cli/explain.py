"""``clipviz explain``: images decoded in worker processes, explained in batches, written in
threads; each image's table printed in order; failures at the end.

    inputs (images, prompts, model) ─► OutputPlan.check ─► load_model
        ─► clipviz.folder.explain_files ─► render (overlay / figures / map files) ─► table, manifest

Under torchrun each process takes its shard of the images (clipviz.distributed) and rank 0 merges
the manifest parts at the end.
"""

import json
import os
import sys
import warnings
from pathlib import Path

from .. import progress
from ..errors import ClipvizError
from ..maps import peak_xy
from ..outputs import NoSpace, refuse_existing
from ..suffixes import is_video
from ..threads import passive_openmp_waits, usable_cpus
from .inputs import check_prompts, clip_tokenizer, load_model, model_name, refuse_pipes_under_torchrun, split_inputs
from .plan import OutputPlan, once_each
from .policy import failure_text, keep_failure, one_line, report_failures


def run(args):
    """Explain every image, write its files, print its table; failures listed at the end."""
    passive_openmp_waits()  # the model shares the cores with decoding workers and writer threads
    refuse_pipes_under_torchrun(args.image_list)
    images, prompts = once_each(*split_inputs(args.inputs, args.image, args.images, args.prompt, args.image_list),
                                clip_tokens=clip_tokenizer(args.model))
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
    from .. import distributed, manifest

    ranks = distributed.from_environment()
    if ranks.distributed and args.json:
        raise ClipvizError("--json under torchrun would mix several processes' output: use --manifest FILE.jsonl "
                           "(merged by rank 0) instead")
    # a named method is checked before anything heavy loads; without one, the model's family picks it
    method, options = method_and_options(args) if args.method is not None else (None, None)
    plan = OutputPlan(args.out, images, prompts, args.format, args.figure, args.layers, args.heads, args.force,
                      args.against, overlays=not args.no_overlays, maps=args.maps)
    check_run_options(args, plan, images)
    check_against(prompts, args.against, clip_tokenizer(args.model))
    settings = run_settings(args, prompts, name)
    defaulted = ("method",) if args.method is None else ()
    recorded = set()  # the outputs the manifest records: redone ones are replaced without --force (plan.owns)
    done_before = manifest.done_images(args.manifest, settings, recorded, defaulted) if args.resume else set()
    plan.recorded, plan.resumed = {os.path.abspath(path) for path in recorded}, args.resume
    todo = [i for i in ranks.shard(len(images)) if os.path.abspath(images[i]) not in done_before]
    queries = prompts + ([args.against] if args.against else [])
    check_prompts(queries, args.model)
    if plan.overlays or plan.figure or plan.layers or plan.heads:  # colours drawn: matplotlib needed
        from ..render import colormap_table
        colormap_table(args.cmap)  # an unknown --cmap fails here, before the model loads
    device = distributed.device_for(ranks, args.device)
    with distributed.ProcessGroup(ranks, device) as group:
        problem = None
        try:  # this rank's files; every rank must hear of a problem, or the others wait forever
            plan.check(len(images), mine=todo)
            if ranks.rank == 0 and args.manifest and not args.resume:  # --force: parts of an earlier run go
                for part in manifest.existing_parts(args.manifest):
                    part.unlink()
        except (ClipvizError, OSError) as error:
            problem = error if isinstance(error, ClipvizError) else ClipvizError(f"cannot remove {error.filename}: "
                                                                                  f"{error.strerror}")
        if not group.all_agree(problem is None):
            raise problem or ClipvizError("another torchrun process refused its output files (see its message)")
        model = load_model(name, device, args.activation, queries, prints=args.json or not args.quiet)
        if method is None:
            from ..methods import default_method
            args.method = default_method(model)
            method, options = method_and_options(args)
        if settings["method"] is None:  # the default of a model known only now: recorded and compared as run
            settings["method"] = args.method
            if args.resume:  # the records against the method run
                manifest.check_settings(args.manifest, settings, defaulted)
        code = _explain_all(args, name, model, images, prompts, method, options, plan, todo, ranks, len(done_before),
                            settings)
        group.barrier()  # every part complete before rank 0 merges them
        if ranks.distributed and ranks.rank == 0 and args.manifest:
            manifest.merge(args.manifest, args.resume)
        group.barrier()  # torchrun stops every process once one exits non-zero: not before the merge
    return code


# the flags that decide a run's results and files: a resumed run must repeat them (manifest.done_images);
# the method's options come from --method, --start-layer and --layers, so those flags stand for them
SETTING_FLAGS = ("activation", "method", "start_layer", "against", "format", "figure", "layers", "heads",
                 "no_overlays", "maps", "cmap", "alpha", "dpi")


def run_settings(args, prompts, model):
    """{flag: value} of SETTING_FLAGS, the model's name (the default resolved), the output folder
    (normalised: ``r`` and ``./r/`` are one), the prompts and the working folder (``cwd``, which
    relative paths are taken against), as the manifest records them. The
    method left out is the model's default: resolved here from a registered name, else None until
    the model loads (run sets it then, and a --resume compares it then)."""
    settings = {flag: getattr(args, flag, None) for flag in SETTING_FLAGS}
    if settings["method"] is None:  # "--method relevance" and no --method are one question on a ViT
        settings["method"] = registered_default_method(model)
    out = None if args.out is None else os.path.normpath(args.out)
    # the folder relative paths are taken against: a resume from elsewhere finds the same files
    return {**settings, "model": model, "out": out, "prompts": list(prompts), "cwd": os.getcwd()}


def registered_default_method(name):
    """The default method of a registered model (``ViT-B/16``, ``RN50``, ``random:RN50``,
    ``synth-vit-t16``) from its name: OpenAI names every ResNet ``RN…``. None for a checkpoint file
    or an adapter spec, whose family is known only once it loads."""
    from .. import hub
    from ..methods import DEFAULT_METHODS

    arch = name[len(hub.RANDOM):] if name.startswith(hub.RANDOM) else name
    if arch not in hub.available_models():
        return None
    return DEFAULT_METHODS["resnet" if arch.startswith("RN") else "vit"]


def check_run_options(args, plan, images):
    """--manifest, --resume, --no-overlays and --workers, before anything loads."""
    from .. import manifest
    from ..outputs import refuse_inputs

    if args.resume and not args.manifest:
        raise ClipvizError("--resume continues the run recorded in a manifest: pass the same --manifest FILE.jsonl")
    if not (plan.figure or plan.overlays or plan.maps or plan.layers or plan.heads or args.manifest or args.json):
        raise ClipvizError("--no-overlays leaves nothing to write: add --maps npz|png, --manifest FILE.jsonl or --json")
    if args.workers is not None and args.workers < 0:
        raise ClipvizError(f"--workers {args.workers}: give 0 (decode in this process) or more")
    cpus = usable_cpus()
    if args.workers is not None and args.workers > cpus:  # more processes than CPUs only wait for each other
        warnings.warn(f"--workers {args.workers}: capped at {cpus}, the CPUs this process may use")
        args.workers = cpus
    if args.manifest:
        if not args.manifest.endswith(".jsonl"):
            raise ClipvizError(f"--manifest {args.manifest}: a manifest is JSON Lines; give a name ending in .jsonl")
        refuse_inputs([args.manifest], images)
        check_manifest_path(args.manifest, args.force)
        existing = [str(p) for p in [Path(args.manifest), *manifest.existing_parts(args.manifest)] if p.exists()]
        if existing and not (args.resume or args.force):
            raise ClipvizError(f"the manifest {existing[0]} exists: pass --resume to continue that run or --force "
                               "to start over")


def check_against(prompts, against, clip_tokens):
    """--against that is one of the prompts is refused before the model loads, for models with
    CLIP's tokenizer (it lower-cases and squashes spaces: "A  DOG" is "a dog"); other tokenizers'
    queries are compared by their token ids once loaded (explanation.prepare_query)."""
    from ..explanation import against_itself
    from ..tokenizer import clean_text

    same = clean_text if clip_tokens else (lambda text: text)
    for prompt in prompts if against else ():
        if same(prompt) == same(against):
            raise against_itself(prompt, against)


def check_manifest_path(path, force):
    """--manifest names a regular file, a new name, or (with --force) a link: a FIFO would block the
    run, a folder cannot be written, and a link is not followed without --force (as outputs)."""
    from ..files import kind_of
    from ..outputs import link_words

    if os.path.exists(path) and not os.path.isfile(path):
        raise ClipvizError(f"--manifest {path} is {kind_of(os.stat(path).st_mode)}, not a regular file: give a "
                           "file name ending in .jsonl")
    if os.path.islink(path) and not force:
        raise ClipvizError(f"--manifest {path} is {link_words(path)}; links are not followed: pass --force to "
                           "replace the link, or give another --manifest")


def _explain_all(args, name, model, images, prompts, method, options, plan, todo, ranks, skipped, settings=None):
    """Explain images[todo] through clipviz.folder, print and record each; → the exit status."""
    from .. import manifest
    from ..folder import default_workers, explain_files

    results, written, failures = [], [], []
    show = not args.quiet and not args.json
    if skipped and not args.quiet:
        print(f"clipviz: {skipped} images already done (--resume, {args.manifest}); {len(todo)} to go", file=sys.stderr)
    workers = args.workers if args.workers is not None else \
        default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", 1))) if len(todo) > 1 else 0
    figures = plan.figure or plan.layers or plan.heads  # matplotlib's text layout is not thread-safe
    # overlays and PNG encoding release the GIL: two threads overlap the model even on 2 CPUs
    threads = 1 if figures else min(8, max(2, usable_cpus() // 2))
    part = None if not args.manifest else manifest.part_path(args.manifest, ranks.rank) if ranks.distributed \
        else args.manifest
    record = manifest.Writer(part, resume=args.resume) if part else None
    enabled = len(todo) > 1 and not args.quiet and sys.stderr.isatty()
    try:
        with progress.bar(len(todo), "image", enabled) as bar:
            runs = explain_files(model, images, prompts, method, indices=todo, against=args.against, options=options,
                                 write=lambda index, exp: _write_outputs(exp, plan, index, args),
                                 batch_size=args.batch_size, workers=workers, threads=threads,
                                 photos=bool(plan.overlays or figures))  # else nothing is drawn on the photo
            for count, done in enumerate(runs):
                if isinstance(done.error, NoSpace):  # every later image would fail the same way
                    raise ClipvizError(f"{done.error}; the run stopped there: free space, then run the same command "
                                       + ("with --resume" if args.manifest else "again (it replaces its own outputs)"))
                if record is not None:
                    record.write(manifest.record(done, failure_text(done.error) if done.error else None, settings))
                if done.error is not None:
                    keep_failure(failures, done.path, done.error, count, len(images))  # 1: a single-image run
                else:
                    written.extend(done.files)
                    if args.json:
                        results.append({**done.explanation.to_dict(), "image": done.path,
                                        "files": [str(f) for f in done.files]})
                    if show:
                        bar.write(_explain_table(done.explanation, done.path, done.files), file=sys.stdout)
                bar.update(1)
    finally:
        if record is not None:
            record.close()
    if args.json:
        json.dump({"model": name, "method": args.method, "prompts": prompts, "against": args.against,
                   "results": results, "failures": [{"image": i, "error": e} for i, e in failures],
                   "files": [str(f) for f in written]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif show and len(todo) > 1:
        print(f"{len(written)} files written to {plan.folder}/ ({len(todo) - len(failures)} of {len(todo)} images)")
    return report_failures(failures, len(todo))


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
        force = args.force or plan.owns(path)  # a resumed run replaces its own damaged output
        refuse_existing([path], force)  # planned as new; refuse if something appeared there since
        if kind == "overlay":
            render.save_overlay(path, exp.photo, exp.maps[prompt], **style, protect=plan.inputs, force=force)
        elif kind in ("maps", "map"):
            from ..mapfiles import save_map_png, save_maps_npz
            if kind == "maps":
                save_maps_npz(path, exp, protect=plan.inputs, force=force)
            else:
                save_map_png(path, exp.maps[prompt], protect=plan.inputs, force=force)
        else:
            figure = (render.explanation_figure(exp, **style) if kind == "figure" else
                      render.layer_strip(exp, prompt, **style) if kind == "layers" else
                      render.head_grid(exp, prompt, **style))
            render.save_figure(figure, path, dpi=args.dpi, protect=plan.inputs, force=force)
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
