"""What `tera run` prints once the stack is ready: where it is and how to call it."""

from __future__ import annotations

from devstack.engine_args import SPEECH_MODEL_ID
from devstack.stack import StackPlan


def print_banner(plan: StackPlan, seconds: float) -> None:
    model = plan.model_ids[0]
    speech = ""
    if SPEECH_MODEL_ID in plan.model_ids:
        speech = f"""
  curl {plan.base_url}/audio/speech -H 'Content-Type: application/json' \\
    -d '{{"model": "{SPEECH_MODEL_ID}", "input": "Hello from Tera.", "voice": "alloy"}}' \\
    -o hello.mp3
"""
    print(
        f"""
[tera] ready in {seconds:.0f} s. OpenAI API: {plan.base_url}
  (metrics and /admin/usage: {plan.ops_url}, not on the API port)

  curl {plan.base_url}/chat/completions \\
    -H 'Content-Type: application/json' -H 'Authorization: Bearer sk-tera-local' \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
{speech}
  Python: OpenAI(base_url="{plan.base_url}", api_key="sk-tera-local")
  Ctrl-C stops everything.
""",
        flush=True,
    )
