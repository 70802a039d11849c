"""ipywidgets panels for notebooks 01, 02, 03 and 05.

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
def truncation_text(lengths: list[dict], max_seq_length: int) -> str:
    """One line: how many rows `max_seq_length` truncates (the slider's readout, also read by the browser test)."""
    from utils.batching import truncated_share

    n = sum(r["total"] > max_seq_length for r in lengths)
    return (f"max_seq_length={max_seq_length}: {n} of {len(lengths)} rows "
            f"({truncated_share(lengths, max_seq_length):.1%}) truncated")


def max_seq_length_slider(cfg: dict, lengths: list[dict], key: str = "max_seq_length", show: bool = True,
                          on_change=None):
    """A slider for cfg[key] that redraws utils.plots.plot_truncation and a one-line readout; returns the
    widget (None headless). `on_change(value)` runs after each move (notebook 01 writes the run config there)."""
    import matplotlib.pyplot as plt

    from utils.plots import plot_truncation

    if widgets is None:
        print(f"ipywidgets is not installed: {key} stays {cfg[key]}")
        return None
    hi = max(max(r["total"] for r in lengths) + 64, cfg[key])
    slider = widgets.IntSlider(value=cfg[key], min=16, max=hi, step=16, description=key,
                               style={"description_width": "initial"}, continuous_update=False)
    label = widgets.HTML(layout=widgets.Layout(margin="0 0 0 8px"))
    label.add_class("truncation-readout")
    out = widgets.Output()

    def redraw(change=None):
        cfg[key] = slider.value
        label.value = f"<b>{truncation_text(lengths, slider.value)}</b>"
        with out:
            out.clear_output(wait=True)
            fig = plot_truncation(lengths, slider.value)
            display(fig)
            plt.close(fig)
        if change is not None and on_change is not None:
            on_change(slider.value)

    slider.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([slider, label, out])
    box.controls = {"slider": slider, "label": label}
    if show:
        display(box)
    return box


# ---------------------------------------------------------------- notebook 02: will it fit on my GPU?
# Memory torch reports for each card (total_memory, GiB): a "16 GB" T4 has about 15 GiB.
GPUS = {"T4 16 GB": 15.0, "L4 24 GB": 22.0, "A100 40 GB": 39.4, "A100 80 GB": 79.2, "H100 80 GB": 79.2}


def default_gpu(gpu_gib: float | None = None) -> str:
    """The GPUS entry closest to this machine's card (A100 80 GB without one)."""
    from utils.config import gpu_memory_gib

    gib = gpu_memory_gib() if gpu_gib is None else gpu_gib
    if gib <= 0:
        return "A100 80 GB"
    return min(GPUS, key=lambda name: abs(GPUS[name] - gib))


def fit_check(gpu: str, precision: str, batch_size: int, max_seq_length: int, tiles: int, r: int) -> dict:
    """The planned training peak of the 11B model (utils.memory.plan_training_memory, LoRA r on q,k,v,o of the
    text decoder, gradient checkpointing), the memory it needs with headroom (utils.config.required_gib) and
    whether that fits the card."""
    from utils.config import required_gib
    from utils.memory import config_11b, plan_training_memory

    plan = plan_training_memory(config_11b(), precision, LoraSettings(r=r), batch_size=batch_size,
                                seq_len=max_seq_length, image=tiles > 0, tiles=max(tiles, 1))
    planned = plan["total"] / 2**30
    need = required_gib(planned)
    return {"gpu": gpu, "gpu_gib": GPUS[gpu], "precision": precision, "batch_size": batch_size,
            "max_seq_length": max_seq_length, "tiles": tiles, "r": r, "planned_gib": round(planned, 2),
            "required_gib": round(need, 2), "fits": need <= GPUS[gpu],
            "parts_gib": {k: round(v / 2**30, 2) for k, v in plan.items() if k != "total"}}


def fit_html(check: dict) -> str:
    """A bar of the planned peak (and the headroom) against the card's memory, with the verdict."""
    gpu = check["gpu_gib"]
    scale = max(gpu, check["required_gib"]) * 1.05
    planned_w, need_w, gpu_w = (100 * value / scale for value in (check["planned_gib"], check["required_gib"], gpu))
    color = "#52c41a" if check["fits"] else "#f5222d"
    verdict = "fits" if check["fits"] else "does not fit"
    return (f'<div class="fit-verdict" style="font-weight:bold;color:{color}">{check["gpu"]}: {verdict} '
            f'({check["planned_gib"]:.1f} GiB planned, {check["required_gib"]:.1f} GiB with headroom, '
            f'card {gpu:.1f} GiB)</div>'
            f'<div style="position:relative;height:22px;width:100%;max-width:560px;background:#f0f0f0;border:1px solid #ccc">'
            f'<div style="position:absolute;height:100%;width:{need_w:.1f}%;background:{color};opacity:0.35"></div>'
            f'<div style="position:absolute;height:100%;width:{planned_w:.1f}%;background:{color}"></div>'
            f'<div style="position:absolute;height:100%;left:{gpu_w:.1f}%;border-left:3px solid #000"></div></div>'
            f'<small>dark: planned peak; light: + headroom (10% + 1 GiB); black line: the card. '
            f'Parts (GiB): {", ".join(f"{k} {v}" for k, v in check["parts_gib"].items())}</small>')


def fit_widget(cfg: dict, key: str = "fit_check", show: bool = True):
    """"Will it fit on my GPU?": GPU, precision, batch size, max_seq_length, image tiles and LoRA r, with the
    planned peak as a bar against the card. Defaults from cfg; each change writes cfg[key] (fit_check's dict).
    Returns the widget (None headless: cfg[key] is the check at the defaults)."""
    precision = cfg.get("precision") if cfg.get("precision") in ("8bit", "4bit", "bf16") else "8bit"
    start = dict(gpu=default_gpu(), precision=precision, batch_size=int(cfg.get("per_device_train_batch_size", 2)),
                 max_seq_length=int(cfg.get("max_seq_length", 512)), tiles=4, r=int(cfg.get("lora", {}).get("r", 8)))
    cfg[key] = fit_check(**start)
    if widgets is None:
        print(f"ipywidgets is not installed: {fit_html(cfg[key])}")
        return None
    style = {"description_width": "initial"}
    controls = {
        "gpu": widgets.Dropdown(options=list(GPUS), value=start["gpu"], description="GPU"),
        "precision": widgets.Dropdown(options=["8bit", "4bit", "bf16"], value=start["precision"], description="precision"),
        "batch_size": widgets.IntSlider(value=start["batch_size"], min=1, max=16, description="batch size", style=style),
        "max_seq_length": widgets.IntSlider(value=start["max_seq_length"], min=64, max=4096, step=64,
                                            description="max_seq_length", style=style, continuous_update=False),
        "tiles": widgets.IntSlider(value=start["tiles"], min=0, max=4, description="image tiles (0: text only)",
                                   style=style),
        "r": widgets.IntSlider(value=start["r"], min=1, max=128, description="LoRA r", style=style),
    }
    result = widgets.HTML()
    result.add_class("fit-result")

    def update(change=None):
        cfg[key] = fit_check(**{k: w.value for k, w in controls.items()})
        result.value = fit_html(cfg[key])

    for w in controls.values():
        w.observe(update, names="value")
    update()
    c = controls
    box = widgets.VBox([widgets.HBox([c["gpu"], c["precision"]]), widgets.HBox([c["batch_size"], c["max_seq_length"]]),
                        widgets.HBox([c["tiles"], c["r"]]), result])
    box.controls, box.result = controls, result
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


def lora_panel(cfg: dict, models: dict, key: str = "lora", show: bool = True, on_change=None):
    """Sliders/checkboxes for r, lora_alpha, lora_dropout, target_modules and scope that write into
    cfg[key] and show live lora_numbers() for each model in `models` ({label: model}).

    Returns the widget (None headless). A choice that matches nothing shows the error instead of numbers.
    `on_change(cfg[key])` runs after each change (notebook 03 writes the run config there).
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
    table.add_class("lora-numbers")

    def update(change=None):
        lora_cfg.update(r=r.value, lora_alpha=alpha.value, lora_dropout=round(dropout.value, 3), scope=scope.value,
                        target_modules=[n for n, box in targets.items() if box.value])
        settings = settings_from_cfg(lora_cfg)
        if not settings.target_modules:
            table.value = "<b>pick at least one target module</b>"
            return
        table.value = lora_table_html({label: lora_numbers(m, settings) for label, m in models.items()})
        if change is not None and on_change is not None:
            on_change(lora_cfg)

    for w in (r, alpha, dropout, scope, *targets.values()):
        w.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([r, alpha]), widgets.HBox([dropout, scope]),
                        widgets.HBox(list(targets.values())), table])
    box.controls = {"r": r, "lora_alpha": alpha, "lora_dropout": dropout, "scope": scope, **targets}
    if show:
        display(box)
    return box


# ---------------------------------------------------------------- notebook 05: before / after on one row
def row_html(expected: str, before: dict, after: dict, prompt: str = "") -> str:
    """Expected, base and adapted answers side by side for one evaluate_answers() row."""
    import html

    def col(title, text, extra=""):
        return (f'<td style="vertical-align:top;padding:6px;border:1px solid #ddd;width:33%">'
                f'<b>{title}</b>{extra}<br>{html.escape(text)}</td>')

    def mark(row):
        return (" ✓" if row.get("exact") else "") + (" ⏹" if row.get("stopped") else " …")

    return (f'<div class="row-prompt"><b>Q:</b> {html.escape(prompt)}</div>'
            f'<table class="before-after-row" style="width:100%;border-collapse:collapse"><tr>'
            f'{col("expected", expected)}{col("base (adapter off)", before["answer"], mark(before))}'
            f'{col("adapted", after["answer"], mark(after))}</tr></table>'
            '<small>✓ exact match · ⏹ stopped at &lt;|eot_id|&gt; · … ran to max_new_tokens</small>')


def before_after_viewer(before_rows: list[dict], after_rows: list[dict], cfg: dict | None = None,
                        key: str = "shown_row", show: bool = True):
    """A dropdown of held-out rows (evaluate_answers()["rows"] of the base and the adapted model) showing the
    image, when the row has one, and expected / base / adapted answers side by side. The chosen index is
    written to cfg[key]. Returns the widget (None headless: the first row is printed)."""
    cfg = {} if cfg is None else cfg
    index = min(int(cfg.get(key, 0) or 0), len(before_rows) - 1)
    cfg[key] = index
    if widgets is None or not before_rows:
        if before_rows:
            b, a = before_rows[index], after_rows[index]
            print(f"{b['source']}: expected {b['expected']!r} | base {b['answer']!r} | adapted {a['answer']!r}")
        return None
    options = [(f"{i}: {b['source']} {'🖼 ' if b['image'] else ''}{b['prompt'][:50]}", i)
               for i, b in enumerate(before_rows)]
    choose = widgets.Dropdown(options=options, value=index, description="row", layout=widgets.Layout(width="90%"))
    image = widgets.Image(format="png", layout=widgets.Layout(max_width="224px", max_height="224px"))
    answers = widgets.HTML()
    answers.add_class("before-after-row")

    def update(change=None):
        i = choose.value
        cfg[key] = i
        b, a = before_rows[i], after_rows[i]
        answers.value = row_html(b["expected"], b, a, b["prompt"])
        if b.get("image"):
            import io

            from utils.data import open_image

            buf = io.BytesIO()
            open_image(b["image"]).resize((224, 224)).save(buf, format="PNG")
            image.value = buf.getvalue()
            image.layout.display = None
        else:
            image.layout.display = "none"

    choose.observe(update, names="value")
    update()
    box = widgets.VBox([choose, widgets.HBox([image, answers])])
    box.controls = {"row": choose, "answers": answers, "image": image}
    if show:
        display(box)
    return box
