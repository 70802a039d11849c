"""Korean texts for utils.i18n.tr: the English text (the key, exactly as written in utils/) -> Korean.

Style: 합니다체 for sentences, noun phrases for labels; technical names (LoRA, GiB, max_seq_length, <|eot_id|>)
stay as they are. Placeholders ({n}, {gib:.1f}) must be the same as in the key (tests/test_i18n.py).
"""

KO: dict[str, str] = {
    # ---------------------------------------------------------------- notebook_setup.py: setup, describe()
    "not available (CPU)": "사용할 수 없음 (CPU)",
    "reset_run_config=True: deleted {path}; the choices of earlier runs (data files, max_seq_length, precision, LoRA) "
    "are forgotten": "reset_run_config=True: {path} 파일을 지웠습니다. 이전 실행에서 고른 값(데이터 파일, max_seq_length, "
                     "precision, LoRA)은 더 이상 쓰지 않습니다",
    "reset_run_config=True: nothing to delete ({path} does not exist yet)":
        "reset_run_config=True: 지울 것이 없습니다 ({path} 파일이 아직 없습니다)",
    "precision {precision} <- run config (set by {notebook})": "precision {precision} <- 실행 설정 ({notebook}에서 지정)",
    "this notebook uses": "이 노트북이 쓰는 설정",
    "r={r}, alpha={alpha} (scale {scale:g}), dropout {dropout:g}, on {targets} in scope {scope}":
        "r={r}, alpha={alpha} (배율 {scale:g}), dropout {dropout:g}, 대상 {targets}, 범위 {scope}",
    "the model: tiny (offline, CPU) or 11b (meta-llama/Llama-3.2-11B-Vision-Instruct)":
        "모델: tiny (오프라인, CPU) 또는 11b (meta-llama/Llama-3.2-11B-Vision-Instruct)",
    "the base weights: 8bit (LLM.int8), 4bit (nf4), bf16 or fp32": "기본 모델 가중치: 8bit (LLM.int8), 4bit (nf4), bf16 또는 fp32",
    "every notebook reads and writes here": "모든 노트북이 여기서 읽고 씁니다",
    "longest row in tokens (prompt + answer); longer prompts are shortened":
        "한 행의 최대 토큰 수 (프롬프트 + 답변). 더 긴 프롬프트는 줄입니다",
    "rows per training step": "학습 스텝당 행 수",
    "steps summed into one optimizer update": "옵티마이저 업데이트 한 번에 합치는 스텝 수",
    "optimizer updates in training (-1: whole epochs)": "학습 중 옵티마이저 업데이트 횟수 (-1: 에폭 단위)",
    "passes over the training rows (when max_steps is -1)": "학습 행 전체를 도는 횟수 (max_steps가 -1일 때)",
    "peak learning rate of the adapter": "어댑터의 최대 학습률",
    "training rows used (None: all)": "사용할 학습 행 수 (None: 전부)",
    "held-out rows for the eval loss (None: all)": "평가 손실에 쓰는 평가용 행 수 (None: 전부)",
    "LoRA: rank r, alpha (the update is scaled by alpha / r), dropout, target modules, scope":
        "LoRA: 랭크 r, alpha (업데이트에 alpha / r을 곱합니다), dropout, 대상 모듈, 범위",
    "LoRA rank: A is r x in_features, B is out_features x r": "LoRA 랭크: A는 r x in_features, B는 out_features x r",
    "the update B·A is scaled by lora_alpha / r": "업데이트 B·A에 lora_alpha / r을 곱합니다",
    "dropout on the adapter's input": "어댑터 입력에 거는 dropout",
    "the Linear layers that get adapters (short names; in LoraConfig a regex over full names)":
        "어댑터를 붙일 Linear 레이어 (짧은 이름. LoraConfig에서는 전체 이름에 맞추는 정규식)",
    "base biases stay frozen (none)": "기본 모델의 bias는 고정 (none)",
    "the loss: next-token prediction on the language model's output": "손실: 언어 모델 출력으로 다음 토큰 예측",
    "LLM.int8: Linear weights in int8, one scale per output row": "LLM.int8: Linear 가중치를 int8로, 출력 행마다 스케일 하나",
    "nf4: Linear weights in 4 bits, one scale per block": "nf4: Linear 가중치를 4비트로, 블록마다 스케일 하나",
    "input columns with any |x| above this are multiplied in 16-bit (the outliers)":
        "|x|가 이 값을 넘는 입력 열은 16비트로 곱합니다 (이상치)",
    "kept in 16-bit (each name in both forms: transformers 5 matches from the start)":
        "16비트로 유지 (이름마다 두 형태로 적습니다. transformers 5는 이름의 앞부분부터 맞춰 봅니다)",
    "the 4-bit number format": "4비트 숫자 형식",
    "the block scales are quantized too": "블록 스케일도 양자화합니다",
    "4-bit weights are unpacked to this dtype for each matmul": "행렬 곱마다 4비트 가중치를 이 dtype으로 풀어 계산합니다",
    # ---------------------------------------------------------------- run_config.py: KEYS, resolve()
    "training JSONL (notebooks: train_file)": "학습 JSONL (노트북: train_file)",
    "held-out JSONL for the eval loss (notebooks: eval_file)": "평가 손실용 평가 JSONL (노트북: eval_file)",
    "profile: tiny or 11b": "프로필: tiny 또는 11b",
    "a local folder or Hub id instead of the profile's model": "프로필의 모델 대신 쓸 로컬 폴더 또는 Hub id",
    "weights: 8bit, 4bit, bf16, fp16, fp32": "가중치: 8bit, 4bit, bf16, fp16, fp32",
    "longest row in tokens; longer prompts lose the middle of the user text":
        "한 행의 최대 토큰 수. 더 긴 프롬프트는 사용자 텍스트의 가운데를 잘라 냅니다",
    "true: train only the last assistant answer of a multi-turn chat (default: every answer)":
        "true: 여러 턴 대화에서 마지막 어시스턴트 답변만 학습 (기본값: 모든 답변)",
    "comma-separated module names, e.g. q_proj,k_proj,v_proj,o_proj": "쉼표로 구분한 모듈 이름, 예: q_proj,k_proj,v_proj,o_proj",
    "language, cross_attention or language_vision": "language, cross_attention 또는 language_vision",
    "the run folder: checkpoints, loss_history.json (local or Google Drive)":
        "실행 폴더: 체크포인트, loss_history.json (로컬 또는 Google Drive)",
    "rows per device and step": "장치 하나, 스텝 하나당 행 수",
    "steps per update": "업데이트당 스텝 수",
    "epochs": "에폭 수",
    "steps (overrides epochs when > 0)": "스텝 수 (0보다 크면 에폭 수 대신 씁니다)",
    "peak LR": "최대 학습률",
    "run config (set by {notebook})": "실행 설정 ({notebook}에서 지정)",
    "parameter": "파라미터 셀",
    "default": "기본값",
    # ---------------------------------------------------------------- setup.py: the setup line
    "setup: {profile} in {precision} | planned training peak {peak} {where}{warn} | {reason}":
        "설정: {profile}, {precision} | 계획된 학습 최대 메모리 {peak} {where}{warn} | {reason}",
    "of {gpu:.1f} GiB GPU memory": "/ GPU 메모리 {gpu:.1f} GiB",
    "(no CUDA GPU: CPU run)": "(CUDA GPU 없음: CPU 실행)",
    " - may not fit, expect out-of-memory": " - 메모리에 들어가지 않을 수 있습니다 (out-of-memory 예상)",
    "{what} set by {source}": "{what}: {source}에서 지정",
    "argument": "호출 인자",
    "no CUDA GPU: the tiny profile runs on CPU": "CUDA GPU 없음: tiny 프로필을 CPU에서 실행합니다",
    "no CUDA GPU: the 11b profile on CPU will be very slow": "CUDA GPU 없음: 11b 프로필은 CPU에서 매우 느립니다",
    "the tiny profile": "tiny 프로필",
    "8bit needs {gib:.1f} GiB with headroom": "8bit에는 여유분을 포함해 {gib:.1f} GiB가 필요합니다",
    "8bit would need {gib8:.1f} GiB with headroom, 4bit {gib4:.1f} GiB":
        "여유분을 포함해 8bit에는 {gib8:.1f} GiB, 4bit에는 {gib4:.1f} GiB가 필요합니다",
    "the 11B model needs {gib:.1f} GiB with headroom even in 4bit: the tiny profile":
        "11B 모델은 4bit로도 여유분을 포함해 {gib:.1f} GiB가 필요합니다: tiny 프로필",
    "11b in {precision} needs {gib:.1f} GiB with headroom": "{precision}의 11b에는 여유분을 포함해 {gib:.1f} GiB가 필요합니다",
    "11b in {precision} would need {gib:.1f} GiB with headroom: the tiny profile":
        "{precision}의 11b에는 여유분을 포함해 {gib:.1f} GiB가 필요합니다: tiny 프로필",
    # ---------------------------------------------------------------- data.py, batching.py, vision_cache.py, train.py
    "skip_bad=True: dropped {n} bad line(s) of {name}:\n{report}":
        "skip_bad=True: {name}에서 잘못된 줄 {n}개를 뺐습니다:\n{report}",
    "the last answer only (mask_history)": "마지막 답변만 (mask_history)",
    "every assistant answer": "모든 어시스턴트 답변",
    "encoded {n} rows (max_seq_length={max_seq_length}): {n_trunc} with a shortened prompt, {n_skipped} skipped; "
    "labels on {labels}": "행 {n}개를 인코딩했습니다 (max_seq_length={max_seq_length}): 프롬프트를 줄인 행 {n_trunc}개, "
                          "건너뛴 행 {n_skipped}개. 레이블: {labels}",
    "tokenizing": "토큰화",
    "  skipped {source}: {reason}": "  건너뜀 {source}: {reason}",
    "in memory": "메모리에 보관",
    "on disk in {folder} (over max_memory_mb={max_mb:,.0f})": "디스크의 {folder}에 보관 (max_memory_mb={max_mb:,.0f} 초과)",
    "vision feature cache: {n} unique images of {n_paths} paths, {mb:,.3g} MB in {dtype} ({per_image:.3g} MB per image), "
    "{where}": "비전 특징 캐시: 경로 {n_paths}개 중 서로 다른 이미지 {n}개, {dtype}로 {mb:,.3g} MB "
               "(이미지당 {per_image:.3g} MB), {where}",
    "vision feature cache: {computed} images computed, {reused} reused from disk, {seconds:.1f} s":
        "비전 특징 캐시: 이미지 {computed}개 계산, {reused}개는 디스크에서 재사용, {seconds:.1f}초",
    "resuming from {checkpoint}": "체크포인트에서 이어서 학습합니다: {checkpoint}",
    # ---------------------------------------------------------------- lora.py, modeling.py, memory.py
    "trainable parameters: {trainable:,} of {total:,} ({share:.2%})":
        "학습 파라미터: 전체 {total:,}개 중 {trainable:,}개 ({share:.2%})",
    "memory: ": "메모리: ",
    "model {gib:.2f} GiB": "모델 {gib:.2f} GiB",
    "process {gib:.2f} GiB of RAM": "프로세스 RAM {gib:.2f} GiB",
    "GPU {used:.2f} GiB in use, peak {peak:.2f} of {total:.1f} GiB":
        "GPU 사용 중 {used:.2f} GiB, 최대 메모리 {peak:.2f} GiB (전체 {total:.1f} GiB)",
    "int8 (vision 16-bit)": "int8 (비전 16비트)",
    "int8 all": "int8 (전부)",
    # ---------------------------------------------------------------- plots.py: figures
    "note: no font with Korean glyphs is installed for matplotlib, so figures leave the Korean text out (it is printed "
    "instead). Install one with `apt-get install -y fonts-noto-cjk` (scripts/setup.sh and the Colab cell do) and "
    "restart the kernel.": "참고: matplotlib에서 쓸 한글 글꼴이 설치되어 있지 않아 그림에 한국어를 그릴 수 없습니다. 그림의 "
                           "제목과 축 이름은 영어로 표시하고, 한국어 질문과 답은 그림 대신 출력합니다. "
                           "`apt-get install -y fonts-noto-cjk`로 글꼴을 설치하고(scripts/setup.sh와 Colab 셀이 "
                           "설치합니다) 커널을 다시 시작하세요.",
    "{n} training rows with an image: the question and the trained answer under each":
        "이미지가 있는 학습 행 {n}개: 그림마다 아래에 질문과 학습시키는 답",
    "vision tower": "비전 타워",
    "projector": "프로젝터",
    "text decoder Linear": "텍스트 디코더 Linear",
    "norms, gates": "정규화, 게이트",
    "quant. scales": "양자화 스케일",
    "{parts}\n(each under {gib:.2f} GiB)": "{parts}\n(각각 {gib:.2f} GiB 미만)",
    "GiB of weights (dashed lines: GPU memory of the cards in the fit widget)":
        "가중치 메모리 GiB (점선: 'GPU에 들어갈까?' 위젯에 있는 GPU의 메모리)",
    "{model}: weight memory by precision": "{model}: 정밀도별 가중치 메모리",
    "part of the model": "모델의 부분",
    "Korean": "한국어",
    "English": "영어",
    "prompt tokens": "프롬프트 토큰",
    "answer tokens": "답변 토큰",
    "total tokens": "전체 토큰",
    "image rows ({n})": "이미지 행 ({n})",
    "{language} text ({n})": "{language} 텍스트 ({n})",
    "tokens": "토큰",
    "rows": "행",
    "Token lengths of {n} rows (Llama 3.2 tokenizer)": "행 {n}개의 토큰 길이 (Llama 3.2 토크나이저)",
    "max_seq_length={max_seq_length}: {n} of {total} rows ({share:.1%}) truncated":
        "max_seq_length={max_seq_length}: 행 {total}개 중 {n}개({share:.1%})가 잘립니다",
    "max_seq_length (tokens)": "max_seq_length (토큰)",
    "% rows truncated": "잘리는 행 (%)",
    "loss: cross-entropy per answer token (nats)": "손실: 답변 토큰당 교차 엔트로피 (nats)",
    "LoRA fine-tuning loss": "LoRA 파인튜닝 손실",
    "train (raw)": "학습 (원래 값)",
    "train, mean of {window} (last {last:.2f})": "학습, {window}개 이동 평균 (마지막 {last:.2f})",
    "train (last {last:.2f})": "학습 (마지막 {last:.2f})",
    "eval, held-out rows ({first:.2f} → {last:.2f})": "평가 손실, 평가용 행 ({first:.2f} → {last:.2f})",
    "optimizer step": "옵티마이저 스텝",
    "perplexity = e^loss": "퍼플렉서티 = e^손실",
    "Before and after fine-tuning": "파인튜닝 전과 후",
    "exact match (content)": "정확 일치 (내용)",
    "right form (language, length, stops)": "올바른 형식 (언어, 길이, 멈춤)",
    "base (adapter off)": "기본 모델 (어댑터 끔)",
    "adapted": "어댑터 적용",
    "share of rows": "행 비율",
    "W (frozen)": "W (고정)",
    "B (trained)": "B (학습)",
    "A (trained)": "A (학습)",
    "W + ΔW\n(what the layer uses)": "W + ΔW\n(레이어가 실제로 쓰는 값)",
    "ΔW = (α/r)·B·A\nrank {r}": "ΔW = (α/r)·B·A\n랭크 {r}",
    "where": "여기서",
    "LoRA: the frozen W plus a rank-r update; only A and B train":
        "LoRA: 고정된 W에 랭크 r 업데이트를 더합니다. 학습하는 것은 A와 B뿐입니다",
    "first {k_out} rows × {k_in} columns of {n_out} × {n_in}": "{n_out} × {n_in} 중 앞쪽 {k_out}행 × {k_in}열",
    ", first {k_r} of rank {r}": ", 랭크 {r} 중 앞쪽 {k_r}개",
    "one colour scale for every panel": "모든 패널이 같은 색 척도",
    "trained": "학습",
    "masked (-100)": "마스킹 (-100)",
    "{n} tokens": "토큰 {n}개",
    # ---------------------------------------------------------------- widgets.py: panels
    "ipywidgets is not installed: {key} stays {value}": "ipywidgets가 설치되어 있지 않습니다: {key} = {value} 그대로 둡니다",
    "ipywidgets is not installed: {shown}": "ipywidgets가 설치되어 있지 않습니다: {shown}",
    " · {key} is now {value} (was {start}): rerun {rerun} to use it there":
        " · {key}: 이제 {value} (이전 {start}). 그 셀에서 이 값을 쓰려면 {rerun} 셀을 다시 실행하세요",
    "weights": "가중치",
    "lora_params": "LoRA 파라미터",
    "gradients": "그래디언트",
    "optimizer": "옵티마이저",
    "activations": "활성값",
    "logits": "로짓",
    "int8_kept_inputs": "int8 레이어가 보관한 입력",
    "fits": "들어갑니다",
    "does not fit": "들어가지 않습니다",
    "{gpu}: {verdict} ({planned:.1f} GiB planned, {required:.1f} GiB with headroom, card {card:.1f} GiB)":
        "{gpu}: {verdict} (계획 {planned:.1f} GiB, 여유분 포함 {required:.1f} GiB, 카드 {card:.1f} GiB)",
    "dark: planned peak; light: + headroom (10% + 1 GiB); black line: the card. Parts (GiB): {parts}":
        "진한 색: 계획된 최대 메모리, 연한 색: + 여유분 (10% + 1 GiB), 검은 선: 카드 메모리. 항목별 (GiB): {parts}",
    "precision": "정밀도",
    "batch size": "배치 크기",
    "image tiles (0: text only)": "이미지 타일 (0: 텍스트만)",
    "model": "모델",
    "adapted layers": "어댑터를 붙인 레이어",
    "trainable params": "학습 파라미터",
    "adapter MB (fp32)": "어댑터 MB (fp32)",
    "AdamW state + grads MB": "AdamW 상태 + 그래디언트 MB",
    "no target module is checked": "선택한 대상 모듈이 없습니다",
    "target_modules {targets} with scope {scope!r} match no layer of {models}":
        "target_modules {targets}: 범위 {scope!r}에서 {models}의 어느 레이어와도 맞지 않습니다",
    " or ": " 또는 ",
    "(none)": "(없음)",
    "<b>Not used, not saved:</b> {problem}. cfg[\"{key}\"] and the run config keep the last valid choice ({summary}); "
    "check a target module that exists in this scope.":
        "<b>적용하지도 저장하지도 않았습니다:</b> {problem}. cfg[\"{key}\"]와 실행 설정은 마지막으로 유효했던 선택"
        "({summary})을 유지합니다. 이 범위에 있는 대상 모듈을 선택하세요.",
    "{names}: no such layer in scope {scope!r}, ignored": "{names}: 범위 {scope!r}에 없는 레이어라 무시합니다",
    "; rerun {rerun} to use it in this notebook": ". 이 노트북에서 쓰려면 {rerun} 셀을 다시 실행하세요",
    "saved": "저장됨",
    "now": "현재",
    "{steps} optimizer steps x {effective} rows per step ({batch} per forward pass x {accum} accumulated) at peak "
    "learning rate {lr:g}": "옵티마이저 스텝 {steps}번 x 스텝당 {effective}행 (순전파 한 번에 {batch}행 x {accum}번 누적), "
                            "최대 학습률 {lr:g}",
    " = {passes:.1f} passes over the {n} training rows": " = 학습 행 {n}개를 {passes:.1f}번 도는 양",
    "changed? rerun 4.10 (its settings, TrainingArguments and training cells read cfg)":
        "값을 바꿨다면 4.10을 다시 실행하세요 (그 설정 셀, TrainingArguments 셀, 학습 셀이 cfg를 읽습니다)",
    "row": "행",
    "{source}: expected {expected!r} | base {base!r} | adapted {adapted!r}":
        "{source}: 정답 {expected!r} | 기본 모델 {base!r} | 어댑터 적용 {adapted!r}",
    # ---------------------------------------------------------------- inference.py: tables (also the row viewer)
    "✓ exact match · ⏹ stopped at &lt;|eot_id|&gt; · … ran to max_new_tokens":
        "✓ 정확 일치 · ⏹ &lt;|eot_id|&gt;에서 멈춤 · … max_new_tokens까지 생성",
    "training rows": "학습 행",
    "held-out, seen answer": "평가용 행, 학습에 있던 답",
    "held-out, new answer": "평가용 행, 새로운 답",
    "prompt": "프롬프트",
    "image": "이미지",
    "expected": "정답",
    "before": "학습 전",
    "after": "학습 후",
    "exact match": "정확 일치",
    "right form": "올바른 형식",
    "answer loss (nats/token)": "답변 손실 (nats/토큰)",
    "metric": "지표",
    "base": "기본 모델",
    # utils/export.py: where the merge runs
    "{gib:.1f} GiB free on the GPU": "GPU에 {gib:.1f} GiB 남음",
    "no GPU": "GPU 없음",
    "{gpu}, {gib:.1f} GiB of RAM available": "{gpu}, RAM {gib:.1f} GiB 사용 가능",
    "merging on the GPU: it needs {need:.1f} GiB ({have})": "GPU에서 병합합니다: {need:.1f} GiB 필요 ({have})",
    "merging on the CPU: it needs {need:.1f} GiB ({have})": "CPU에서 병합합니다: {need:.1f} GiB 필요 ({have})",
    "not merging: a 16-bit copy of the base needs {need:.1f} GiB free on the GPU or in RAM, and this runtime has "
    "{have}. The adapter works unmerged (PeftModel.from_pretrained); to merge, run utils.export.merge_adapter on a "
    "machine with that much RAM or GPU memory.":
        "병합하지 않습니다: 기본 모델의 16비트 사본에는 GPU나 RAM에 {need:.1f} GiB의 여유가 필요한데, 이 런타임에는 "
        "{have}. 어댑터는 병합하지 않아도 그대로 쓸 수 있습니다(PeftModel.from_pretrained). 병합하려면 RAM이나 GPU "
        "메모리가 그만큼 있는 머신에서 utils.export.merge_adapter를 실행하세요.",
}
