"""The unify stage: raw medical passages -> (question, answer) pairs through any OpenAI-compatible endpoint.

``endpoint`` (the client, shared with the LLM judge), ``passages`` (reading and splitting the corpus), ``filters``
(the two calls' prompts and what a usable reply is), ``journal`` (the resumable results files), ``validation`` (the
config), ``run`` (the concurrent, resumable run). The command is ``python -m huatuo.unify`` (``__main__``).
"""
