"""An interactive explorer for notebooks: ``clipviz.explore(model, image)`` or ``exp.explore()``.

Switches: a prompt box, the method, the start layer (or block) it reads from, one attention head,
the heatmap opacity and the colour map. Only what the recorded tensors cannot answer runs the
model again:

    switch                                      model run?
    opacity, colour map, head                   never: the overlay is re-blended, the head's map
                                                is already in ``Explanation.head_maps``
    start layer (relevance, rollout, legrad,    never: these methods read blocks ≥ start_layer
    gradeclip)                                  only, so one recording from block 0 serves every
                                                start layer (``method.compute(records, start_layer=k)``)
    block (attention, gradcam)                  never: every block is recorded in the first pass
                                                (``method.compute(records, layer=k)``)
    prompt, method                              once per (prompt, method), then cached

``Session`` holds that cache and needs no widgets (tests drive it directly); ``Explorer`` puts
ipywidgets (the optional extra ``clipviz[widgets]``) around it and shows the state as a titled
figure, the same figure ``Explorer.figure()`` returns.
"""

import dataclasses
import html

from .adapters import adapt
from .errors import ClipvizError
from .explanation import check_contrast, clean_prompts, explanations_from, prepare_query, record_batch
from .maps import map_to_photo, normalise_maps
from .methods import available_methods, get_method, is_prompt_specific
from .preprocess import load_image
from .render import explanation_figure, overlay

CMAP_CHOICES = ("jet", "viridis", "inferno", "turbo", "magma", "Reds")  # the dropdown's; any matplotlib name works

MEAN = "mean"  # the head switch's "all heads": the method's own map


def layer_option(method):
    """The option that picks blocks for ``method``: "start_layer", "layer" or None."""
    options = get_method(method).options
    return next((name for name in ("start_layer", "layer") if name in options), None)


class Session:
    """Explanations of one photo, recorded once per (prompt, method[, layer]) and recomputed from
    the records for every other switch (see the module docstring). ``model_runs`` counts passes
    through the model."""

    def __init__(self, model, image, against=None):
        self.adapter = adapt(model)
        self.photo = load_image(image)
        self.against = against
        self.model_runs = 0
        self._recordings = {}
        self._explanations = {}

    @property
    def num_layers(self):
        return getattr(self.adapter, "num_layers", 0)

    def methods(self):
        """The methods for this model family (with a contrast, only the prompt-specific ones)."""
        resnet_only = ("attention_pool",)
        family = getattr(self.adapter, "family", "vit")
        names = ["gradcam", *resnet_only] if family == "resnet" else \
            [m for m in available_methods() if m not in resnet_only]
        return [m for m in names if self.against is None or is_prompt_specific(m)]

    def default_layer(self, method):
        """The method's own default block index in [0, L), or None when it takes no layer."""
        name = layer_option(method)
        if name is None or self.num_layers == 0:
            return None
        return get_method(method).options[name] % self.num_layers

    def explanation(self, prompt, method="relevance", layer=None):
        """The Explanation of ``prompt`` by ``method`` from block ``layer`` (None: the method's default)."""
        prompt = clean_prompts(prompt)[0]
        check_contrast(method, self.against)
        name = layer_option(method) if self.num_layers else None
        layer = self.default_layer(method) if layer is None and name else layer
        key = (prompt, method, layer)
        if key not in self._explanations:
            options = {name: layer} if name else {}
            # start_layer methods read blocks ≥ start: one recording from block 0 serves every
            # start; layer methods read one block's attention: record all of them in the same
            # pass. Grad-CAM's features are the tokens entering one block: recorded per block.
            per_block = name == "layer" and self._records_features(method, options)
            slot = (prompt, method, layer) if per_block else (prompt, method)
            if slot not in self._recordings:
                chosen = _AllBlocks(get_method(method)) if name == "layer" and not per_block else get_method(method)
                recorded = {name: 0} if name == "start_layer" else options if per_block else {}
                query = prepare_query(self.adapter, [prompt], self.against)
                self._recordings[slot] = record_batch(self.adapter, [self.photo], query, chosen, recorded)
                self.model_runs += 1
            recording = self._recordings[slot]
            output = get_method(method).compute(recording.records, options)
            self._explanations[key] = explanations_from(recording, output, get_method(method), options)[0]
        return self._explanations[key]

    def _records_features(self, method, options):
        """True when ``method`` records patch features, which the adapter takes from one block only."""
        return get_method(method).needs(self.adapter, options).features

    def view(self, prompt, method="relevance", layer=None, head=None):
        """The explanation reduced to the one map shown: head ``head`` of ``head_maps`` (None: the
        method's map). Returns an Explanation with one prompt whose ``maps[0]`` is that map and
        whose ``method`` names the method, block and head, for the figure's title."""
        exp = self.explanation(prompt, method, layer)
        name = layer_option(method) if self.num_layers else None
        label = method + {"start_layer": f" · from block {exp.options.get(name)}",
                          "layer": f" · block {exp.options.get(name)}"}.get(name, "")
        if head is None:
            return dataclasses.replace(exp, method=label)
        if exp.head_maps is None or not 0 <= head < exp.head_maps.shape[1]:
            count = 0 if exp.head_maps is None else exp.head_maps.shape[1]
            raise ClipvizError(f"head {head!r} is not available for {method!r} (it has {count} head maps): "
                               "choose a head below that count, or the mean")
        token_map = exp.head_maps[0, head][None]
        return dataclasses.replace(exp, token_maps=token_map, maps=map_to_photo(normalise_maps(token_map), exp.crop_box),
                                   method=f"{label} · head {head}")


class _AllBlocks:
    """A Method that reads one block (``layer=k``), recording every block in one pass: its
    ``needs`` is the union over k of the method's own; everything else is the method's."""

    def __init__(self, method):
        self.method = method

    def __getattr__(self, name):  # name, options, families, compute, check_family ...
        return getattr(self.method, name)

    def needs(self, model, options):
        per_block = [self.method.needs(model, {**options, "layer": k}) for k in range(model.num_layers)]
        return dataclasses.replace(per_block[0], layers=tuple(sorted({b for n in per_block for b in n.layers})))


def explore(model, image, prompt="a photo", method="relevance", *, against=None, layer=None, head=None,
            alpha=0.5, cmap="jet", prompts=()):
    """An interactive explorer of ``image`` (ipywidgets; ``pip install clipviz[widgets]``).

    prompt: the starting prompt (the box takes any other); prompts: suggestions for the box.
    method, layer (block index, default the method's own), head (None = the method's map),
    alpha (opacity in [0, 1]), cmap: the starting switches. Returns an ``Explorer``; display it
    (the last expression of a cell) to get the controls.
    """
    return Explorer(Session(model, image, against), prompt, method, layer, head, alpha, cmap, prompts)


class Explorer:
    """ipywidgets around a Session: ``controls`` (dict of widgets by switch name), ``image`` (an
    ipywidgets.Image holding the figure as PNG), ``overlay`` (uint8 [H, W, 3], the map shown,
    blended over the photo), ``explanation`` (the Explanation shown)."""

    def __init__(self, session, prompt, method, layer, head, alpha, cmap, prompts=()):
        try:
            import ipywidgets as widgets
        except ImportError:
            raise ClipvizError("the explorer needs ipywidgets: pip install 'clipviz[widgets]' "
                               "(or pip install ipywidgets)") from None
        self.session = session
        methods = session.methods()
        if method not in methods:
            raise ClipvizError(f"method {method!r} is not available here; choose one of: {', '.join(methods)}")
        prompt = clean_prompts(prompt)[0]
        style = {"description_width": "90px"}
        self.controls = {
            "prompt": widgets.Combobox(value=prompt, options=list(dict.fromkeys([prompt, *prompts])),
                                       ensure_option=False, continuous_update=False, description="prompt",
                                       style=style),
            "method": widgets.Dropdown(options=methods, value=method, description="method", style=style),
            "layer": widgets.IntSlider(min=0, max=max(0, session.num_layers - 1), description="start block",
                                       continuous_update=False, style=style),
            "head": widgets.Dropdown(options=[("mean", None)], value=None, description="head", style=style),
            "opacity": widgets.FloatSlider(value=float(alpha), min=0.0, max=1.0, step=0.05, description="opacity",
                                           continuous_update=False, style=style),
            "cmap": widgets.Dropdown(options=list(dict.fromkeys([cmap, *CMAP_CHOICES])),
                                     value=cmap, description="colour map", style=style),
        }
        self.status = widgets.HTML()
        self.image = widgets.Image(format="png")
        self.widget = widgets.HBox([widgets.VBox(list(self.controls.values()) + [self.status]), self.image])
        self._busy = False
        self._set_method_controls(method, layer, head)
        for name, control in self.controls.items():
            control.observe(self._changed_method if name == "method" else self._changed, names="value")
        self.refresh()

    # --- state ---------------------------------------------------------------------------------

    def state(self):
        """The switches as values: dict(prompt, method, layer, head, alpha, cmap)."""
        c = self.controls
        layer = c["layer"].value if not c["layer"].disabled else None
        return dict(prompt=c["prompt"].value, method=c["method"].value, layer=layer, head=c["head"].value,
                    alpha=c["opacity"].value, cmap=c["cmap"].value)

    def figure(self, width="double"):
        """The current view as a titled matplotlib Figure (what the widget shows)."""
        state = self.state()
        return explanation_figure(self.explanation, width=width, cmap=state["cmap"], alpha=state["alpha"])

    def refresh(self):
        """Recompute the view from the switches (the model runs only when the cache lacks it)."""
        if self._busy:
            return
        state = self.state()
        try:
            self.explanation = self.session.view(state["prompt"], state["method"], state["layer"], state["head"])
        except ClipvizError as error:  # e.g. an empty prompt typed in the box: say so, keep the last view
            self.status.value = f"<span style='color:#b00'>{html.escape(str(error))}</span>"
            return
        self.overlay = overlay(self.session.photo, self.explanation.maps[0], cmap=state["cmap"], alpha=state["alpha"])
        from .display import png_bytes
        self.image.value = png_bytes(self.figure(), dpi=100)
        self.status.value = f"model runs so far: {self.session.model_runs}"

    # --- events --------------------------------------------------------------------------------

    def _changed(self, change):
        self.refresh()

    def _changed_method(self, change):
        self._set_method_controls(change["new"], None, None)
        self.refresh()

    def _set_method_controls(self, method, layer, head):
        """Layer slider and head list for ``method``, set without triggering a refresh each."""
        self._busy = True
        try:
            name = layer_option(method) if self.session.num_layers else None
            slider = self.controls["layer"]
            slider.disabled = name is None
            slider.description = "start block" if name == "start_layer" else "block"
            if name is not None:
                slider.value = self.session.default_layer(method) if layer is None else layer % self.session.num_layers
            heads = self.session.explanation(self.controls["prompt"].value, method, slider.value if name else None).head_maps
            count = 0 if heads is None else heads.shape[1]
            self.controls["head"].options = [("mean", None)] + [(f"head {h}", h) for h in range(count)]
            self.controls["head"].value = head if head is not None and head < count else None
            self.controls["head"].disabled = count == 0
        finally:
            self._busy = False

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self):
        s = self.state()
        return (f"<clipviz Explorer {s['prompt']!r}, {s['method']}, block {s['layer']}, head {s['head']}, "
                f"opacity {s['alpha']:.2f}, {s['cmap']}>")

