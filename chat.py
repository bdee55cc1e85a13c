"""Chat with a HuatuoGPT-II model in the terminal, or answer one message for a script.

    python chat.py model_path=outputs/train/<time>/export             # interactive, streamed, multi-turn
    python chat.py model_path=DIR quantize=4bit                       # bitsandbytes NF4 (GPU, or CPU to save memory)
    python chat.py model_path=DIR message='肚子疼怎么办？'               # prints only the reply
    echo '肚子疼怎么办？' | python chat.py model_path=DIR               # the same, the message from stdin
    python chat.py model_path=DIR generation.do_sample=false verbose=true   # greedy, with per-reply statistics

In the terminal: `clear` empties the history, `stop` or Ctrl-D quits, Ctrl-C stops the reply being written.
The same function is installed as `huatuo-chat`; the Python API is huatuo.inference.HuatuoChat. Config: conf/chat.yaml.
"""

from huatuo.chat import main

if __name__ == "__main__":
    main()
