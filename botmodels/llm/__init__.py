"""Language models over OpenAI's API: chat and text completions, `/v1/models` (`schemas`,
`parse`, `front`, `proxy`, `routes`); runner: `runners/llm.py`.
"""
