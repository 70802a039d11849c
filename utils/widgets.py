"""ipywidgets panels for notebooks 01, 02, 03 and 05.

Every panel reads its defaults from a plain config dict (`cfg`, built in the notebook's
parameters section) and writes each change back into the same dict, so Run All with no clicks
uses the defaults, and a headless run (scripts/run_notebooks.py) works without ipywidgets: the
`*_panel` functions then return None and only print the current values.
"""

from __future__ import annotations

try:
    import ipywidgets as widgets
    from IPython.display import display
except ImportError:  # headless or a minimal install: the notebooks still run top to bottom
    widgets = None

from utils.config import LoraSettings
from utils.i18n import N_, tr
from utils.lora import SCOPES, adapter_megabytes, matching_modules, optimizer_state_megabytes

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "fc1", "fc2")


# ---------------------------------------------------------------- notebook 01
def truncation_text(lengths: list[dict], max_seq_length: int) -> str:
    """One line: how many rows `max_seq_length` truncates (the slider's readout, also read by the browser test)."""
    from utils.batching import truncated_share

    n = sum(r["total"] > max_seq_length for r in lengths)
    return tr("max_seq_length={max_seq_length}: {n} of {total} rows ({share:.1%}) truncated",
              max_seq_length=max_seq_length, n=n, total=len(lengths), share=truncated_share(lengths, max_seq_length))


def max_seq_length_slider(cfg: dict, lengths: list[dict], key: str = "max_seq_length", show: bool = True,
                          on_change=None, save_to=None, rerun: str = ""):
    """A slider for cfg[key] that redraws utils.plots.plot_truncation (saved to `save_to` at every move) and a
    one-line readout; returns the widget (None headless). `on_change(value)` runs after each move (notebook 01
    writes the run config there); `rerun` names the cells that read cfg[key] and must be run again after a move
    (the readout says so once the value changed)."""
    import matplotlib.pyplot as plt

    from utils.plots import plot_truncation

    if widgets is None:
        print(tr("ipywidgets is not installed: {key} stays {value}", key=key, value=cfg[key]))
        return None
    hi = max(max(r["total"] for r in lengths) + 64, cfg[key])
    slider = widgets.IntSlider(value=cfg[key], min=16, max=hi, step=16, description=key,
                               style={"description_width": "initial"}, continuous_update=False)
    label = widgets.HTML(layout=widgets.Layout(margin="0 0 0 8px"))
    label.add_class("truncation-readout")
    out = widgets.Output()

    start = cfg[key]

    def redraw(change=None):
        cfg[key] = slider.value
        note = (tr(" · {key} is now {value} (was {start}): rerun {rerun} to use it there", key=key, value=slider.value,
                   start=start, rerun=rerun) if rerun and slider.value != start else "")
        label.value = f"<b>{truncation_text(lengths, slider.value)}</b>{note}"
        with out:
            out.clear_output(wait=True)
            fig = plot_truncation(lengths, slider.value, save_to=save_to)
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
# The parts of plan_training_memory as fit_html names them (keys stay English; tr translates them when shown)
PLAN_PARTS = (N_("weights"), N_("lora_params"), N_("gradients"), N_("optimizer"), N_("activations"), N_("logits"),
              N_("int8_kept_inputs"))
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
    verdict = tr("fits") if check["fits"] else tr("does not fit")
    head = tr("{gpu}: {verdict} ({planned:.1f} GiB planned, {required:.1f} GiB with headroom, card {card:.1f} GiB)",
              gpu=check["gpu"], verdict=verdict, planned=check["planned_gib"], required=check["required_gib"], card=gpu)
    parts = ", ".join(f"{tr(k)} {v}" for k, v in check["parts_gib"].items())
    return (f'<div class="fit-verdict" style="font-weight:bold;color:{color}">{head}</div>'
            f'<div style="position:relative;height:22px;width:100%;max-width:560px;background:#f0f0f0;border:1px solid #ccc">'
            f'<div style="position:absolute;height:100%;width:{need_w:.1f}%;background:{color};opacity:0.35"></div>'
            f'<div style="position:absolute;height:100%;width:{planned_w:.1f}%;background:{color}"></div>'
            f'<div style="position:absolute;height:100%;left:{gpu_w:.1f}%;border-left:3px solid #000"></div></div>'
            '<small>' + tr("dark: planned peak; light: + headroom (10% + 1 GiB); black line: the card. Parts (GiB): {parts}",
                           parts=parts) + '</small>')


def reference_fit_start() -> dict:
    """Where the fit widget starts: the 11B reference plan notebook 02 prints just before it (8-bit, batch 2 x
    512 tokens + 1 image of 4 tiles, LoRA r=8: utils.config.REFERENCE_*, LoraSettings()), on this machine's card
    (an A100 80 GB without one). Not the tiny profile's training values: the widget plans the 11B model."""
    from utils.config import REFERENCE_BATCH_SIZE, REFERENCE_SEQ_LEN

    return dict(gpu=default_gpu(), precision="8bit", batch_size=REFERENCE_BATCH_SIZE, max_seq_length=REFERENCE_SEQ_LEN,
                tiles=4, r=LoraSettings().r)


def fit_widget(cfg: dict, key: str = "fit_check", show: bool = True, start: dict | None = None):
    """"Will it fit on my GPU?": GPU, precision, batch size, max_seq_length, image tiles and LoRA r, with the
    planned peak of the 11B model as a bar against the card. Starts at `reference_fit_start()` (fields in
    `start` override it); each change writes cfg[key] (fit_check's dict). Returns the widget (None headless:
    cfg[key] is the check at the start values)."""
    start = {**reference_fit_start(), **(start or {})}
    cfg[key] = fit_check(**start)
    if widgets is None:
        print(tr("ipywidgets is not installed: {shown}", shown=fit_html(cfg[key])))
        return None
    style = {"description_width": "initial"}
    controls = {
        "gpu": widgets.Dropdown(options=list(GPUS), value=start["gpu"], description="GPU"),
        "precision": widgets.Dropdown(options=["8bit", "4bit", "bf16"], value=start["precision"],
                                     description=tr("precision")),
        "batch_size": widgets.IntSlider(value=start["batch_size"], min=1, max=16, description=tr("batch size"),
                                        style=style),
        "max_seq_length": widgets.IntSlider(value=start["max_seq_length"], min=64, max=4096, step=64,
                                            description="max_seq_length", style=style, continuous_update=False),
        "tiles": widgets.IntSlider(value=start["tiles"], min=0, max=4, description=tr("image tiles (0: text only)"),
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
    names = (N_("model"), N_("adapted layers"), N_("trainable params"), N_("adapter MB (fp32)"),
             N_("AdamW state + grads MB"))
    head = "<tr>" + "".join(f"<th>{tr(name)}</th>" for name in names) + "</tr>"
    body = "".join(f"<tr><td>{k}</td><td>{v['adapted_layers']}</td><td>{v['trainable']:,}</td>"
                   f"<td>{v['adapter_mb']:.1f}</td><td>{v['optimizer_mb']:.1f}</td></tr>" for k, v in rows.items())
    return f"<table>{head}{body}</table>"


def settings_from_cfg(lora_cfg: dict) -> LoraSettings:
    known = LoraSettings.__dataclass_fields__
    return LoraSettings(**{k: v for k, v in lora_cfg.items() if k in known})


def lora_choice_problem(settings: LoraSettings, models: dict) -> str | None:
    """Why `settings` cannot train (None when it can): no target module checked, or target modules that match
    no layer of a model in `models` ({label: model}) in that scope, which utils.lora.lora_config (notebook 04,
    the command line) refuses with LoraTargetError."""
    if not settings.target_modules:
        return tr("no target module is checked")
    empty = [label for label, model in models.items() if not matching_modules(model, settings)]
    if empty:
        return tr("target_modules {targets} with scope {scope!r} match no layer of {models}",
                  targets=", ".join(settings.target_modules), scope=settings.scope, models=tr(" or ").join(empty))
    return None


def unmatched_targets(model, settings: LoraSettings) -> list[str]:
    """The checked target modules that match no layer of `model` in this scope (ignored by peft)."""
    return [name for name in settings.target_modules
            if not matching_modules(model, LoraSettings(target_modules=[name], scope=settings.scope))]


def lora_summary(lora_cfg: dict) -> str:
    """cfg["lora"] in one line: r, alpha, dropout, targets, scope."""
    return (f"r={lora_cfg['r']}, lora_alpha={lora_cfg['lora_alpha']}, lora_dropout={lora_cfg['lora_dropout']:g}, "
            f"target_modules={','.join(lora_cfg['target_modules']) or tr('(none)')}, scope={lora_cfg.get('scope', 'language')}")


def lora_panel(cfg: dict, models: dict, key: str = "lora", show: bool = True, on_change=None, rerun: str = ""):
    """Sliders/checkboxes for r, lora_alpha, lora_dropout, target_modules and scope that write into
    cfg[key] and show live lora_numbers() for each model in `models` ({label: model}).

    A choice that cannot train (no target checked, or targets that match no layer in the scope:
    `lora_choice_problem`) is refused: the panel says why, and neither cfg[key] nor `on_change` sees it,
    so the run config keeps the last valid choice. `on_change(cfg[key])` runs after each accepted change
    (notebook 03 writes the run config there); `rerun` names the cells that read cfg[key] (shown after a
    change). Returns the widget (None headless).
    """
    lora_cfg = cfg[key]
    if widgets is None:
        print(tr("ipywidgets is not installed: {key} stays {value}", key=key, value=lora_cfg))
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
    status = widgets.HTML()
    status.add_class("lora-status")
    first_model = next(iter(models.values()))

    def update(change=None):
        chosen = dict(lora_cfg, r=r.value, lora_alpha=alpha.value, lora_dropout=round(dropout.value, 3),
                      scope=scope.value, target_modules=[n for n, box in targets.items() if box.value])
        problem = lora_choice_problem(settings_from_cfg(chosen), models)
        if problem:
            status.value = ('<div class="lora-refusal" style="color:#c00">'
                            + tr('<b>Not used, not saved:</b> {problem}. cfg["{key}"] and the run config keep the last '
                                 'valid choice ({summary}); check a target module that exists in this scope.',
                                 problem=problem, key=key, summary=lora_summary(lora_cfg)) + '</div>')
            if not table.value:  # a refused start value: show what is kept
                table.value = lora_table_html({label: lora_numbers(m, settings_from_cfg(lora_cfg))
                                               for label, m in models.items()})
            return
        lora_cfg.update(chosen)
        settings = settings_from_cfg(lora_cfg)
        table.value = lora_table_html({label: lora_numbers(m, settings) for label, m in models.items()})
        unused = unmatched_targets(first_model, settings)
        note = ("<br>" + tr("{names}: no such layer in scope {scope!r}, ignored", names=", ".join(unused),
                               scope=settings.scope) if unused else "")
        if change is None:
            status.value = f"<small>{lora_summary(lora_cfg)}{note}</small>"
            return
        if on_change is not None:
            on_change(lora_cfg)
        again = tr("; rerun {rerun} to use it in this notebook", rerun=rerun) if rerun else ""
        status.value = f"<small>{tr('saved') if on_change else tr('now')}: {lora_summary(lora_cfg)}{again}{note}</small>"

    for w in (r, alpha, dropout, scope, *targets.values()):
        w.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([r, alpha]), widgets.HBox([dropout, scope]),
                        widgets.HBox(list(targets.values())), table, status])
    box.controls = {"r": r, "lora_alpha": alpha, "lora_dropout": dropout, "scope": scope, **targets}
    box.table, box.status = table, status
    if show:
        display(box)
    return box


# ---------------------------------------------------------------- notebook 04: the training knobs
TRAINING_KNOBS = ("max_steps", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps")


def training_text(cfg: dict, n_rows: int | None = None) -> str:
    """One line: what the knobs mean together (rows per optimizer step, epochs over the data)."""
    effective = cfg["per_device_train_batch_size"] * cfg["gradient_accumulation_steps"]
    text = tr("{steps} optimizer steps x {effective} rows per step ({batch} per forward pass x {accum} accumulated)"
              " at peak learning rate {lr:g}", steps=cfg["max_steps"], effective=effective,
              batch=cfg["per_device_train_batch_size"], accum=cfg["gradient_accumulation_steps"], lr=cfg["learning_rate"])
    if n_rows:
        text += tr(" = {passes:.1f} passes over the {n} training rows", passes=cfg["max_steps"] * effective / n_rows,
                   n=n_rows)
    return text


def training_panel(cfg: dict, n_rows: int | None = None, show: bool = True, on_change=None):
    """Controls for max_steps, learning_rate, per-device batch size and gradient accumulation that write into
    `cfg` (notebook 04) and show `training_text`. Returns the widget (None headless).
    `on_change({knob: value})` runs after each change (notebook 04 writes the run config there)."""
    if widgets is None:
        print(tr("ipywidgets is not installed: {shown}", shown=training_text(cfg, n_rows)))
        return None
    style = {"description_width": "initial"}
    steps = widgets.IntSlider(value=cfg["max_steps"], min=1, max=max(1000, cfg["max_steps"]), step=1,
                              description="max_steps", style=style, continuous_update=False)
    lr = widgets.FloatLogSlider(value=cfg["learning_rate"], base=10, min=-5, max=-1.5, step=0.05,
                                description="learning_rate", readout_format=".1e", style=style, continuous_update=False)
    batch = widgets.Dropdown(options=[1, 2, 4, 8, 16], value=cfg["per_device_train_batch_size"],
                             description="per_device_train_batch_size", style=style)
    accum = widgets.Dropdown(options=[1, 2, 4, 8], value=cfg["gradient_accumulation_steps"],
                             description="gradient_accumulation_steps", style=style)
    readout = widgets.HTML()
    readout.add_class("training-readout")
    controls = {"max_steps": steps, "learning_rate": lr, "per_device_train_batch_size": batch,
                "gradient_accumulation_steps": accum}

    def update(change=None):
        for knob, w in controls.items():
            cfg[knob] = float(f"{w.value:.2e}") if knob == "learning_rate" else int(w.value)
        readout.value = (f"<b>{training_text(cfg, n_rows)}</b><br><small>"
                         + tr("changed? rerun 4.10 (its settings, TrainingArguments and training cells read cfg)")
                         + "</small>")
        if change is not None and on_change is not None:
            on_change({knob: cfg[knob] for knob in TRAINING_KNOBS})

    for w in controls.values():
        w.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([steps, lr]), widgets.HBox([batch, accum]), readout])
    box.controls = {**controls, "readout": readout}
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
            f'{col(tr("expected"), expected)}{col(tr("base (adapter off)"), before["answer"], mark(before))}'
            f'{col(tr("adapted"), after["answer"], mark(after))}</tr></table>'
            '<small>' + tr("✓ exact match · ⏹ stopped at &lt;|eot_id|&gt; · … ran to max_new_tokens") + '</small>')


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
            print(tr("{source}: expected {expected!r} | base {base!r} | adapted {adapted!r}", source=b["source"],
                     expected=b["expected"], base=b["answer"], adapted=a["answer"]))
        return None
    options = [(f"{i}: {b['source']} {'🖼 ' if b['image'] else ''}{b['prompt'][:50]}", i)
               for i, b in enumerate(before_rows)]
    choose = widgets.Dropdown(options=options, value=index, description=tr("row"), layout=widgets.Layout(width="90%"))
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
