"""ipywidgets panels for notebooks 01 and 03.

Every panel reads its defaults from a plain config dict (`cfg`, built in the notebook's
parameters section) and writes each change back into the same dict, so Run All with no clicks
uses the defaults, and a headless run (papermill, scripts) works without ipywidgets: the
`*_panel` functions then return None and only print the current values.
"""

from __future__ import annotations

try:
    import ipywidgets as widgets
    from IPython.display import display
except ImportError:  # headless or a minimal install: the notebooks still run top to bottom
    widgets = None

from utils.config import LoraSettings
from utils.lora import SCOPES, adapter_megabytes, matching_modules, optimizer_state_megabytes

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "fc1", "fc2")


# ---------------------------------------------------------------- notebook 01
def max_seq_length_slider(cfg: dict, lengths: list[dict], key: str = "max_seq_length", show: bool = True):
    """A slider for cfg[key] that redraws utils.plots.plot_truncation; returns the widget (None headless)."""
    import matplotlib.pyplot as plt

    from utils.plots import plot_truncation

    if widgets is None:
        print(f"ipywidgets is not installed: {key} stays {cfg[key]}")
        return None
    hi = max(max(r["total"] for r in lengths) + 64, cfg[key])
    slider = widgets.IntSlider(value=cfg[key], min=16, max=hi, step=16, description=key,
                               style={"description_width": "initial"}, continuous_update=False)
    out = widgets.Output()

    def redraw(change=None):
        cfg[key] = slider.value
        with out:
            out.clear_output(wait=True)
            fig = plot_truncation(lengths, slider.value)
            display(fig)
            plt.close(fig)

    slider.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([slider, out])
    if show:
        display(box)
    return box


# ---------------------------------------------------------------- notebook 03
def lora_numbers(model, settings: LoraSettings) -> dict:
    """Adapters, trainable parameters, adapter MB and AdamW-state MB for `settings` on `model`
    (a loaded model or utils.memory.meta_model()), computed from the matching Linear shapes:
    r * (in_features + out_features) per adapted layer, without touching the model."""
    names = matching_modules(model, settings)
    modules = dict(model.named_modules())
    n = 0
    for name in names:
        m = modules[name]
        n += settings.r * (m.in_features + m.out_features)
    return {"adapted_layers": len(names), "trainable": n, "adapter_mb": adapter_megabytes(n),
            "optimizer_mb": optimizer_state_megabytes(n)}


def lora_table_html(rows: dict[str, dict]) -> str:
    """A small HTML table: one row per model ("tiny (loaded)", "11B (meta)")."""
    head = ("<tr><th>model</th><th>adapted layers</th><th>trainable params</th><th>adapter MB (fp32)</th>"
            "<th>AdamW state + grads MB</th></tr>")
    body = "".join(f"<tr><td>{k}</td><td>{v['adapted_layers']}</td><td>{v['trainable']:,}</td>"
                   f"<td>{v['adapter_mb']:.1f}</td><td>{v['optimizer_mb']:.1f}</td></tr>" for k, v in rows.items())
    return f"<table>{head}{body}</table>"


def settings_from_cfg(lora_cfg: dict) -> LoraSettings:
    known = LoraSettings.__dataclass_fields__
    return LoraSettings(**{k: v for k, v in lora_cfg.items() if k in known})


def lora_panel(cfg: dict, models: dict, key: str = "lora", show: bool = True):
    """Sliders/checkboxes for r, lora_alpha, lora_dropout, target_modules and scope that write into
    cfg[key] and show live lora_numbers() for each model in `models` ({label: model}).

    Returns the widget (None headless). A choice that matches nothing shows the error instead of numbers.
    """
    lora_cfg = cfg[key]
    if widgets is None:
        print(f"ipywidgets is not installed: {key} stays {lora_cfg}")
        return None
    r = widgets.IntSlider(value=lora_cfg["r"], min=1, max=128, description="r")
    alpha = widgets.IntSlider(value=lora_cfg["lora_alpha"], min=1, max=256, description="lora_alpha")
    dropout = widgets.FloatSlider(value=lora_cfg["lora_dropout"], min=0.0, max=0.5, step=0.05,
                                  description="lora_dropout")
    scope = widgets.Dropdown(options=sorted(SCOPES), value=lora_cfg.get("scope", "language"), description="scope")
    targets = {name: widgets.Checkbox(value=name in lora_cfg["target_modules"], description=name, indent=False,
                                      layout=widgets.Layout(width="110px"))
               for name in ALL_TARGETS}
    table = widgets.HTML()

    def update(change=None):
        lora_cfg.update(r=r.value, lora_alpha=alpha.value, lora_dropout=round(dropout.value, 3), scope=scope.value,
                        target_modules=[n for n, box in targets.items() if box.value])
        settings = settings_from_cfg(lora_cfg)
        if not settings.target_modules:
            table.value = "<b>pick at least one target module</b>"
            return
        table.value = lora_table_html({label: lora_numbers(m, settings) for label, m in models.items()})

    for w in (r, alpha, dropout, scope, *targets.values()):
        w.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([r, alpha]), widgets.HBox([dropout, scope]),
                        widgets.HBox(list(targets.values())), table])
    box.controls = {"r": r, "lora_alpha": alpha, "lora_dropout": dropout, "scope": scope, **targets}
    if show:
        display(box)
    return box
