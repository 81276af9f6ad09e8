"""The vLLM backend: AsyncLLM hosting one set of weights under one or more model ids.

engine.py      lifecycle: engine arguments, load, warm-up, shutdown, scheduler load
profiles.py    model id -> parsers and chat template, resolved at startup
inputs.py      tera.v1 request -> vLLM's own OpenAI request models
chat.py        chat preparation: template, tool/reasoning parsers, sampling
completion.py  completion preparation: text or token-id prompt, echo, sampling
prepare.py     what both preparations share
outputs.py     vLLM's DELTA outputs -> tera.v1 GenerateResponse
parsing.py     per-choice tool-call and reasoning parsing
backend.py     VllmBackend, tying them together behind the Backend interface
"""
