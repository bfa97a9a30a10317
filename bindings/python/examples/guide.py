"""The session-file guide's flow (save a system prompt's KV cache, load it, continue generating)
in kvstash: no positions, no batches, no buffer capacities.

    python3 examples/guide.py MODEL.gguf
"""
import os
import sys
import tempfile

import kvstash

model = kvstash.Model(sys.argv[1])
session_path = os.path.join(tempfile.gettempdir(), "kvstash-guide.kvs")

# Save (once): decode the system prompt and keep its KV cache in a file.
with kvstash.Session.create(model) as session:
    session.append("You are a helpful assistant for a hardware store. Answer in one sentence.")
    session.save(session_path)

# Load (every request): the cache comes back with its tokens; append only what is new.
with kvstash.Session.open(model, session_path) as session:
    session.append(" Customer: When do you open on Saturday? Assistant:")
    for piece in session.stream(n_predict=32, stop=["\nCustomer:"]):
        print(piece, end="", flush=True)
    print()
