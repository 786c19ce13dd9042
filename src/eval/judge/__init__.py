"""The LLM judge of the paper's evaluation (sec. 3.2, Appendix B), in the order a judgment happens:

    prompt.py   the judge prompt for one prediction record, and the parser of the judge's reply;
    client.py   what is known about judge models, API keys and provider errors, and the HTTP backends
                (OpenAI-compatible chat completions, Gemini generateContent) that ask one prompt;
    judging.py  every record judged: the reply cache, concurrent requests, verdicts, token cost.
"""
