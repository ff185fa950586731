# ---
# cmd: ["modal", "run", "skills/modal-llm-serving/scripts/qwen3_throughput.py"]
# ---

# # Classify a dataset with an LLM at maximum tokens per dollar with vLLM on Modal

# Choose this pattern when the job is "label (or generate for) these N records as cheaply and
# quickly as possible", not "answer each request fast": no HTTP server, no per-request latency,
# just vLLM's Python `LLM` engine packing as many sequences into each GPU step as memory allows,
# in batch workers that Modal fans out over several containers.
#
# The job here labels support tickets: each line of a JSONL file, `{"id": ..., "text": ...}`,
# gets one label from a fixed list. vLLM's structured outputs make every answer one of the
# labels, one shared instruction opens every prompt so the prefix cache computes it once, and
# results land on a Volume batch by batch, so a rerun after a crash skips the ids already done.
#
# The numbers it prints are counted the way `vllm bench throughput` counts them: token ids taken
# from the outputs, a warm-up batch excluded, engine start-up timed separately. Input, output and
# total tokens per second, and the cost per million tokens from the GPU's hourly price.

import json
import os
import time
import uuid
from pathlib import Path

import modal

MINUTES = 60  # seconds

# ## Choose the model

# Qwen3-8B in FP8, at a pinned commit. Published figure for this model on one H100 with vLLM:
# ≈30k input + 2k output tokens/s, about 4 cents per million tokens.

MODEL_NAME = "Qwen/Qwen3-8B-FP8"
MODEL_REVISION = "220b46e3b2180893580a4454f21f22d3ebb187d3"

# ## Choose the hardware

# One GPU per worker: for a model that fits, N independent replicas beat one N-way
# tensor-parallel engine on tokens per dollar (no inter-GPU communication).

GPU_TYPE = "H100"
N_GPU = 1

# List price in USD per GPU-hour (May 2026); the cost per million tokens is computed from it.

GPU_PRICE_PER_HOUR = 3.95

# `None`: run wherever GPUs are free (a batch job has no latency reason to pin a region, and a
# pinned region costs 1.5x-1.75x).

REGION = None

# ## Set up the container image

# The version is the one the test suite checks this file's engine settings against.

VLLM_VERSION = "0.32.0"

vllm_image = (
    modal.Image.debian_slim(python_version="3.12")
    .uv_pip_install(f"vllm=={VLLM_VERSION}")
    .env({"HF_XET_HIGH_PERFORMANCE": "1", "VLLM_NO_USAGE_STATS": "1"})
)

# ## Cache weights and compilation artifacts in Volumes

HF_CACHE_PATH = "/root/.cache/huggingface"
VLLM_CACHE_PATH = "/root/.cache/vllm"
hf_cache_volume = modal.Volume.from_name("mls-huggingface-cache", create_if_missing=True)
vllm_cache_volume = modal.Volume.from_name("mls-vllm-cache", create_if_missing=True)
# Point the Hub client and vLLM at the mounts explicitly, rather than trusting defaults.
vllm_image = vllm_image.env({"HF_HOME": HF_CACHE_PATH, "VLLM_CACHE_ROOT": VLLM_CACHE_PATH})

# Gated models need a Secret holding HF_TOKEN; Qwen3 is not gated.

HF_SECRET = None
secrets = [modal.Secret.from_name(HF_SECRET)] if HF_SECRET else []

# ## Keep the data and the results in a Volume

# Inputs live under `inputs/` of the `mls-batch-data` Volume (`modal run` uploads a local file
# there, or put one yourself: `modal volume put mls-batch-data tickets.jsonl /inputs/`), and the
# results of `inputs/NAME.jsonl` under `results/NAME/`: one JSONL file per finished batch.

DATA_PATH = "/data"
data_volume = modal.Volume.from_name("mls-batch-data", create_if_missing=True)

# ## Configure the engine

# Throughput wants big batches: many sequences decoded together and many tokens per scheduler
# step (long prefills are chunked into steps of this size). Context length covers the shared
# instruction, the longest text and the label, no more, so the KV cache holds more sequences.

MAX_MODEL_LEN = 4096
MAX_NUM_SEQS = 512
MAX_NUM_BATCHED_TOKENS = 16384
GPU_MEMORY_UTILIZATION = 0.92
KV_CACHE_DTYPE = "auto"  # "fp8" halves the KV cache: more sequences per step

# ## Define the task

# Every answer is one of these labels: vLLM's structured outputs mask every other token at
# each step, so no answer needs parsing or retrying.

LABELS = ["billing", "bug report", "feature request", "account access", "other"]

# The instruction, with the label list, is the system message of every prompt, and the record's
# text comes after it. vLLM V1 turns prefix caching on by default, so the instruction's KV blocks
# are computed once per worker and reused by every later prompt: keep all that varies after it.

INSTRUCTION = ("You label customer support tickets. Read the ticket and answer with exactly one "
               "of the labels below, nothing else.")

# Qwen3 thinks before it answers unless its chat template is told not to; a label needs no
# reasoning tokens. (vLLM drops keywords a model's template does not use.)

CHAT_TEMPLATE_KWARGS = {"enable_thinking": False}

# Texts longer than INPUT_LEN tokens are cut to it, so every prompt fits MAX_MODEL_LEN; OUTPUT_LEN
# bounds the answer (a label ends sooner). Each call to a worker labels BATCH_SIZE records and
# writes them, so a crash loses at most one batch per worker.

INPUT_LEN = 1024
OUTPUT_LEN = 128
BATCH_SIZE = 2048  # records per call to a worker
N_CONTAINERS = 4  # workers at most, each one GPU

# One batch of BATCH_SIZE records takes well under a minute on an H100; the first start also
# downloads the weights. Bound both generously, and the whole job by Modal's 24-hour ceiling.

STARTUP_TIMEOUT = 20 * MINUTES
TIMEOUT = 30 * MINUTES
JOB_TIMEOUT = 24 * 60 * MINUTES

# What `modal run` labels when given no file, and what each worker warms up on.

sample_tickets = [
    {"id": "t1", "text": "I was charged twice for my subscription this month."},
    {"id": "t2", "text": "The export button crashes the app on Android 14."},
    {"id": "t3", "text": "Please add a dark mode to the dashboard."},
    {"id": "t4", "text": "I can't log in: the reset link in the email has expired."},
]

# The engine's settings, as `vllm.LLM(...)` keyword arguments (the same names as `vllm serve`'s
# flags, with underscores). The keywords let it run elsewhere (the test suite runs it on a CPU).


def llm_kwargs(*, model: str = MODEL_NAME, revision: str | None = MODEL_REVISION) -> dict:
    return {
        "model": model,
        "revision": revision,
        "max_model_len": MAX_MODEL_LEN,
        "max_num_seqs": MAX_NUM_SEQS,
        "max_num_batched_tokens": MAX_NUM_BATCHED_TOKENS,
        "gpu_memory_utilization": GPU_MEMORY_UTILIZATION,
        "kv_cache_dtype": KV_CACHE_DTYPE,
        "tensor_parallel_size": N_GPU,
    }


# ## Read the records, write the results

# Plain Python on files, so the job's loop reads the mounted Volume like a local folder (and the
# test suite runs the same functions on a local folder). A results file is written under a
# temporary name and renamed, so it is complete or absent: every id in it is done.


def read_records(path: Path) -> list[dict]:
    """The records of a JSONL file, one `{"id": ..., "text": ...}` object per line."""
    records, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not (isinstance(record, dict) and type(record.get("id")) in (str, int)
                and isinstance(record.get("text"), str)):
            raise ValueError(f'{path}:{number}: want {{"id": ..., "text": "..."}}, got {line[:60]}')
        if record["id"] in seen:  # a result names its record by id: two would be one
            raise ValueError(f"{path}:{number}: id {record['id']!r} appears twice")
        seen.add(record["id"])
        records.append({"id": record["id"], "text": record["text"]})
    return records


def done_ids(results_dir: Path) -> set:
    """The ids that already have a result: every line of every finished results file."""
    return {json.loads(line)["id"] for part in sorted(results_dir.glob("*.jsonl"))
            for line in part.read_text(encoding="utf-8").splitlines() if line}


def pending_batches(records: list[dict], done: set, batch_size: int) -> list[list[dict]]:
    """The records without a result, in file order, cut into batches of `batch_size`."""
    todo = [record for record in records if record["id"] not in done]
    return [todo[start:start + batch_size] for start in range(0, len(todo), batch_size)]


def write_results(results_dir: Path, rows: list[dict]) -> Path:
    """One batch's `{"id", "label"}` rows as a new JSONL file in `results_dir`."""
    results_dir.mkdir(parents=True, exist_ok=True)
    final = results_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.jsonl"
    temporary = final.with_suffix(".tmp")
    temporary.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    temporary.replace(final)
    return final


def chat_messages(text: str, labels: list[str]) -> list[dict]:
    """One record's conversation: the shared instruction and labels first, then its text."""
    system = f"{INSTRUCTION}\nLabels: {', '.join(labels)}"
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def clip(text: str, tokenizer, max_tokens: int) -> str:
    """`text` cut to its first `max_tokens` tokens (the instruction before it is never cut)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


# ## Label and count

# A plain function of an `LLM` and a batch of records, so the Modal worker below and the test
# suite (which runs it on a local CPU build of vLLM with a small model) share it.


def label_batch(llm, records: list[dict], *, labels: list[str] = LABELS,
                input_len: int = INPUT_LEN, output_len: int = OUTPUT_LEN) -> tuple[dict, list]:
    """Label `records`: returns the batch's counts (tokens counted from the outputs, as
    `vllm bench throughput` counts them, and the seconds of `chat`) and its `{"id", "label"}`
    rows."""
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams

    # temperature 0: the most likely label, not a sample from the distribution
    params = SamplingParams(temperature=0.0, max_tokens=output_len,
                            structured_outputs=StructuredOutputsParams(choice=labels))
    tokenizer = llm.get_tokenizer()
    conversations = [chat_messages(clip(r["text"], tokenizer, input_len), labels) for r in records]
    start = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=False,
                       chat_template_kwargs=CHAT_TEMPLATE_KWARGS)
    seconds = time.perf_counter() - start
    stats = {
        "requests": len(outputs),
        "input_tokens": sum(len(output.prompt_token_ids) for output in outputs),
        "output_tokens": sum(len(s.token_ids) for output in outputs for s in output.outputs),
        "seconds": seconds,
    }
    # an answer cut short by max_tokens is no label: stored as null, counted, never guessed
    answers = [output.outputs[0].text.strip() for output in outputs]
    rows = [{"id": record["id"], "label": answer if answer in labels else None}
            for record, answer in zip(records, answers, strict=True)]
    return stats, rows


def summarize(batches: list[dict], *, price_per_hour: float, n_gpu: int) -> dict:
    """Aggregate per-batch counts (`label_batch`'s) into rates and cost.

    Rates are per GPU-second of generation summed over workers, so they do not depend on how
    many batches overlapped; the cost per million tokens follows from the GPU's price.
    """
    busy = sum(batch["seconds"] for batch in batches)
    input_tokens = sum(batch["input_tokens"] for batch in batches)
    output_tokens = sum(batch["output_tokens"] for batch in batches)
    total = input_tokens + output_tokens
    dollars = busy / 3600 * price_per_hour * n_gpu
    return {
        "requests": sum(batch["requests"] for batch in batches),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "generate_seconds": busy,
        "input_tokens_per_s": input_tokens / busy,
        "output_tokens_per_s": output_tokens / busy,
        "total_tokens_per_s": total / busy,
        "usd_per_million_output_tokens": dollars / output_tokens * 1e6,
        "usd_per_million_total_tokens": dollars / total * 1e6,
    }


# ## The batch worker

# The app's name in your workspace: deploying under another name runs a second copy.

APP_NAME = "mls-qwen3-throughput"
app = modal.App(APP_NAME)


@app.cls(
    image=vllm_image,
    gpu=f"{GPU_TYPE}:{N_GPU}",
    volumes={HF_CACHE_PATH: hf_cache_volume, VLLM_CACHE_PATH: vllm_cache_volume,
             DATA_PATH: data_volume},
    secrets=secrets,
    region=REGION,
    timeout=TIMEOUT,  # how long may one batch take?
    startup_timeout=STARTUP_TIMEOUT,  # how long may loading the engine take?
    max_containers=N_CONTAINERS,  # how many GPUs work in parallel?
    scaledown_window=2 * MINUTES,  # a finished job should stop billing soon
)
class Worker:
    @modal.enter()
    def load(self) -> None:
        from vllm import LLM

        start = time.perf_counter()
        self.llm = LLM(**llm_kwargs())
        self.init_seconds = time.perf_counter() - start  # reported, never mixed into the rates
        warm, _ = label_batch(self.llm, sample_tickets)  # excluded from the rates
        self.warmup_seconds = warm["seconds"]

    @modal.method()
    def label(self, records: list[dict], results_dir: str) -> dict:
        stats, rows = label_batch(self.llm, records)
        write_results(Path(results_dir), rows)
        data_volume.commit()  # durable now: a rerun skips these ids
        # which container ran it, so start-up is counted once per container in the cost
        worker = os.environ.get("MODAL_TASK_ID") or f"pid-{os.getpid()}"
        return {**stats, "init_seconds": self.init_seconds,
                "warmup_seconds": self.warmup_seconds, "worker": worker,
                "unlabeled": sum(row["label"] is None for row in rows)}


# ## The job's loop, next to the data

# A small CPU function reads the input and the results from the Volume, leaves out the ids that
# are done, and fans the rest out over the GPU workers, yielding each batch's counts as it
# finishes. It runs in Modal, so `modal run --detach` keeps a long job going without your laptop.


@app.function(image=modal.Image.debian_slim(python_version="3.12"),
              volumes={DATA_PATH: data_volume}, timeout=JOB_TIMEOUT)
def label_file(input_path: str, results_dir: str):
    records = read_records(Path(input_path))
    done = done_ids(Path(results_dir))
    batches = pending_batches(records, done, BATCH_SIZE)
    yield {"records": len(records), "done": len(records) - sum(map(len, batches)),
           "batches": len(batches)}
    yield from Worker().label.map(batches, kwargs={"results_dir": results_dir},
                                  order_outputs=False)


# ## Run it

# ```bash
# modal run skills/modal-llm-serving/scripts/qwen3_throughput.py      # the built-in sample
# modal run skills/modal-llm-serving/scripts/qwen3_throughput.py --input-file tickets.jsonl
# modal run skills/modal-llm-serving/scripts/qwen3_throughput.py --volume-file inputs/t.jsonl
# modal volume get mls-batch-data results/tickets   # the labels, one JSONL file per batch
# ```
#
# The same command again resumes: ids with a result are skipped. It prints each batch, then the
# counts, the rates and the cost.


@app.local_entrypoint()
def main(input_file: str = "", volume_file: str = "") -> None:
    if input_file and volume_file:
        raise SystemExit("give --input-file (a local JSONL file) or --volume-file (a path on "
                         "the mls-batch-data Volume), not both")
    remote = volume_file.lstrip("/") or upload(input_file)
    results = f"results/{Path(remote).stem}"
    wall = time.perf_counter()
    batches = []
    for event in label_file.remote_gen(f"{DATA_PATH}/{remote}", f"{DATA_PATH}/{results}"):
        if "batches" in event:
            print(f"{event['records']} records in {remote}, {event['done']} already labeled "
                  f"in {results}, {event['batches']} batches to run")
            continue
        batches.append(event)
        print(f"batch {len(batches)}: {event['requests']} records in {event['seconds']:.1f} s, "
              f"{event['unlabeled']} unlabeled (engine start {event['init_seconds']:.0f} s)")
    if batches:
        print("\n".join(report_lines(batches, wall_seconds=time.perf_counter() - wall)))
    print(f"results: modal volume get mls-batch-data {results}")


def upload(input_file: str) -> str:
    """Put a local JSONL file (none: the sample) on the data Volume; returns its path there."""
    import io

    if input_file:
        try:
            read_records(Path(input_file))  # refuse a bad file here, before uploading it
        except (OSError, ValueError) as exc:
            raise SystemExit(str(exc)) from None  # one line that names the file
        source, name = Path(input_file), Path(input_file).name
    else:
        lines = "".join(json.dumps(ticket) + "\n" for ticket in sample_tickets)
        source, name = io.BytesIO(lines.encode()), "sample.jsonl"
    with data_volume.batch_upload(force=True) as batch:
        batch.put_file(source, f"/inputs/{name}")
    return f"inputs/{name}"


def report_lines(batches: list[dict], *, wall_seconds: float) -> list[str]:
    """The job's summary: counts, rates per GPU and overall, and the cost per million tokens."""
    report = summarize(batches, price_per_hour=GPU_PRICE_PER_HOUR, n_gpu=N_GPU)
    # start-up (engine init + warm-up) is billed too, once per container
    workers = {b["worker"]: b["init_seconds"] + b["warmup_seconds"] for b in batches}
    startup = sum(workers.values())
    share = report["generate_seconds"] / (report["generate_seconds"] + startup)
    return [
        f"{report['requests']} requests, {report['input_tokens']} input + "
        f"{report['output_tokens']} output tokens, {wall_seconds:.0f} s wall clock",
        f"per GPU: {report['input_tokens_per_s']:,.0f} input, "
        f"{report['output_tokens_per_s']:,.0f} output, "
        f"{report['total_tokens_per_s']:,.0f} total tokens/s",
        f"all {len(workers)} workers together: {report['output_tokens'] / wall_seconds:,.0f} "
        "output tokens/s over the wall clock (start-up and image pull included)",
        f"cost at ${GPU_PRICE_PER_HOUR}/GPU-hour: "
        f"${report['usd_per_million_output_tokens']:.3f} per million output tokens, "
        f"${report['usd_per_million_total_tokens']:.4f} per million tokens (input + output)",
        # a job of a few batches pays start-up in full; a long one amortizes it
        f"with start-up ({startup:.0f} s over {len(workers)} workers): "
        f"${report['usd_per_million_output_tokens'] / share:.3f} per million output tokens",
    ]
