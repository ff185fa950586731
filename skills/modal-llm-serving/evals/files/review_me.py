# An app a user asks the agent to review before shipping (eval "review-existing-app").
# It imports with only `modal` installed, and it is wrong in a dozen specific, checkable ways; the
# eval's expectations list them. Do not fix it: it is the input of the eval.

import subprocess

import modal

image = (
    modal.Image.debian_slim()
    .pip_install("vllm")
    .env({"VLLM_SERVER_DEV_MODE": "1"})
)

MODEL = "meta-llama/Llama-3.1-8B-Instruct"

app = modal.App("my-llm")


@app.function(image=image, gpu="H100")
@modal.concurrent(max_inputs=1000)
@modal.web_server(port=8000)
def serve():
    cmd = [
        "vllm", "serve", MODEL,
        "--api-key", "sk-my-team-key-123",
        "--enable-sleep-mode",
        "--port", "8000",
    ]
    subprocess.Popen(" ".join(cmd), shell=True)


@app.function(image=image, gpu="H100")
@modal.web_server(port=8001)
def serve_sglang():
    subprocess.Popen("python -m sglang.launch_server --model-path " + MODEL, shell=True)
