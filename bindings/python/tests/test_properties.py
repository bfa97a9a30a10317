"""kvstash's promises, through the Python API.

Models: KVSTASH_TEST_MODEL and KVSTASH_TEST_MODEL_B, two GGUF files of the same shape and
different weights (`kvstash make-test-model -o a.gguf` and `... -o b.gguf --seed 7`). Unset, every
test fails saying so: never a silent pass. The library: see kvstash/_ffi.py (KVSTASH_LIBRARY).

    python3 -m unittest discover -s bindings/python/tests -v
"""
import os
import sys
import tempfile
import threading
import time
import unittest

if not os.environ.get("KVSTASH_PYTHON_INSTALLED"):  # else the installed package (PYTHONPATH)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import kvstash  # noqa: E402

PREFIX = ("You are a helpful assistant for a hardware store. Answer in one sentence. "
          "Opening hours are 8am to 6pm, Monday to Saturday.")
SUFFIX = " Customer: When do you open on Saturday? Assistant:"


def model_path(var):
    path = os.environ.get(var)
    if not path:
        raise AssertionError(
            "%s is not set: these tests need a GGUF model (`kvstash make-test-model -o a.gguf`, "
            "and for KVSTASH_TEST_MODEL_B `... -o b.gguf --seed 7`); failing rather than "
            "skipping" % var)
    return path


def setUpModule():
    if not os.environ.get("KVSTASH_TEST_VERBOSE"):
        kvstash.set_llama_logs("quiet")


class Base(unittest.TestCase):
    def setUp(self):
        self.model = kvstash.Model(model_path("KVSTASH_TEST_MODEL"))
        self.addCleanup(self.model.close)
        tmp = tempfile.TemporaryDirectory(prefix="kvstash-py-")
        self.addCleanup(tmp.cleanup)
        self.dir = tmp.name

    def path(self, name):
        return os.path.join(self.dir, name)

    def new_session(self, model=None, *texts):
        s = kvstash.Session.create(model or self.model, n_ctx=512)
        self.addCleanup(s.close)
        for t in texts:
            s.append(t)
        return s

    def save_prefix(self, model=None):
        path = self.path("prefix.kvs")
        with kvstash.Session.create(model or self.model, n_ctx=512) as s:
            s.append(PREFIX)
            s.save(path)
        return path


class WarmEqualsCold(Base):
    def test_logits_bit_equal_and_same_greedy_text(self):
        path = self.save_prefix()
        with kvstash.Session.open(self.model, path) as warm:
            self.assertEqual(warm.n_decoded, 0, "opening decodes nothing")
            warm.append(SUFFIX)
            cold = self.new_session(None, PREFIX, SUFFIX)
            self.assertEqual(warm.tokens, cold.tokens)
            self.assertLess(warm.n_decoded, cold.n_decoded)
            w, c = warm.logits(), cold.logits()
            self.assertEqual(len(w), self.model.n_vocab)
            self.assertEqual(w.tobytes(), c.tobytes(), "warm and cold logits differ")
            wg, cg = warm.generate(n_predict=16, temp=0), cold.generate(n_predict=16, temp=0)
            self.assertEqual(wg, cg)
            self.assertTrue(wg.tokens)


class Refusals(Base):
    def test_wrong_model(self):
        with kvstash.Model(model_path("KVSTASH_TEST_MODEL_B")) as b:
            self.assertNotEqual(self.model.fingerprint, b.fingerprint)
            path = self.save_prefix()
            with self.assertRaises(kvstash.IncompatibleError) as cm:
                kvstash.Session.open(b, path)
            self.assertEqual(cm.exception.status, kvstash.Status.INCOMPATIBLE)
            self.assertTrue(cm.exception.message)
        kvstash.Session.open(self.model, path).close()

    def test_hostile_files(self):
        good = self.save_prefix()
        with open(good, "rb") as f:
            data = bytearray(f.read())
        mid = len(data) // 2
        data[mid] ^= 0x01
        flipped = self.path("flipped.kvs")
        with open(flipped, "wb") as f:
            f.write(data)
        with self.assertRaises(kvstash.CorruptionError) as cm:
            kvstash.Session.open(self.model, flipped)
        self.assertEqual(cm.exception.status, kvstash.Status.CORRUPTION)
        with self.assertRaises(kvstash.CorruptionError):
            kvstash.inspect(flipped)

        truncated = self.path("truncated.kvs")
        with open(truncated, "wb") as f:
            f.write(data[:mid])
        with self.assertRaises(kvstash.CorruptionError):
            kvstash.Session.open(self.model, truncated)

        text = self.path("text.kvs")
        with open(text, "w") as f:
            f.write("this is not a session file\n")
        with self.assertRaises(kvstash.CorruptionError):
            kvstash.Session.open(self.model, text)

        with self.assertRaises(kvstash.NotFoundError) as cm:
            kvstash.Session.open(self.model, self.path("missing.kvs"))
        self.assertIsInstance(cm.exception, kvstash.KvstashError)

        info = kvstash.inspect(good)
        self.assertTrue(info.checksums_verified)
        self.assertEqual(info.model_fingerprint, self.model.fingerprint)
        self.assertEqual(info.tokens, self.model.tokenize(PREFIX))

    def test_context_full(self):
        with kvstash.Session.create(self.model, n_ctx=64) as s:
            with self.assertRaises(kvstash.ContextFullError):
                s.append(PREFIX * 40)  # beyond llama.cpp's rounding of n_ctx too
            self.assertEqual(s.tokens, [])


class Streaming(Base):
    def test_stream_yields_the_generated_text(self):
        gen = self.new_session(None, PREFIX, SUFFIX).stream(n_predict=16, temp=0)
        pieces = []
        while True:
            try:
                pieces.append(next(gen))
            except StopIteration as stop:
                streamed = stop.value
                break
        self.assertTrue(pieces)
        self.assertEqual("".join(pieces), streamed.text)
        self.assertEqual(streamed, self.new_session(None, PREFIX, SUFFIX).generate(
            n_predict=16, temp=0))

    def test_closing_the_stream_stops_the_generation(self):
        s = self.new_session(None, PREFIX, SUFFIX)
        before = len(s.tokens)
        gen = s.stream(n_predict=64, temp=0)
        next(gen)
        gen.close()  # joins the worker
        self.assertLess(len(s.tokens) - before, 64)
        self.assertEqual(threading.active_count(), 1)
        s.append(" More.")  # usable again

    def test_callback_false_and_exceptions(self):
        s = self.new_session(None, PREFIX, SUFFIX)
        seen = []
        g = s.generate(n_predict=16, temp=0, on_piece=lambda p: seen.append(p) or False)
        self.assertEqual(len(seen), 1)
        self.assertEqual(g.stop_reason, kvstash.StopReason.CANCELLED)

        def boom(_):
            raise ValueError("boom")

        with self.assertRaisesRegex(ValueError, "boom"):
            s.generate(n_predict=16, temp=0, on_piece=boom)
        s.generate(n_predict=4, temp=0)

    def test_closing_the_session_stops_an_open_stream(self):
        s = kvstash.Session.create(self.model, n_ctx=512)
        s.append(PREFIX)
        gen = s.stream(n_predict=64, temp=0)
        next(gen)
        closer = threading.Thread(target=s.close)
        closer.start()
        closer.join(timeout=20)
        self.assertFalse(closer.is_alive(), "close() hung on the open stream")
        rest = list(gen)  # the stream ends instead of waiting forever
        self.assertLess(len(rest), 64)
        with self.assertRaises(kvstash.InvalidArgumentError):
            s.append("x")  # closed

    def test_a_session_in_use_refuses_a_second_caller(self):
        s = self.new_session(None, PREFIX, SUFFIX)
        gen = s.stream(n_predict=16, temp=0)
        next(gen)
        with self.assertRaises(kvstash.InvalidArgumentError):
            s.append("x")
        gen.close()


class StoreReuse(Base):
    def test_redis_url(self):
        # A URL that cannot be parsed is refused, without its password.
        with self.assertRaises(kvstash.InvalidArgumentError) as e:
            kvstash.Store(self.path("store-bad"), redis_url="http://user:pa55word@127.0.0.1:1")
        self.assertIn("redis://", str(e.exception))
        self.assertNotIn("pa55word", str(e.exception))
        # A Redis that is not there: the store works without it (every lookup a miss).
        with kvstash.Store(self.path("store-down"), chunk_tokens=16,
                           redis_url="redis://:pa55word@127.0.0.1:1") as store:
            tokens = self.model.tokenize(PREFIX + SUFFIX)
            with kvstash.Session.create(self.model, n_ctx=512) as s:
                r = s.sync(tokens, store)
                self.assertEqual((r.n_restored, r.n_decoded), (0, len(tokens)))

    def test_sync_twice(self):
        with kvstash.Store(self.path("store"), chunk_tokens=16) as store:
            tokens = self.model.tokenize(PREFIX + PREFIX + SUFFIX)
            self.assertGreater(len(tokens), 40)
            with kvstash.Session.create(self.model, n_ctx=512) as first:
                r = first.sync(tokens, store)
                self.assertEqual((r.n_reused, r.n_decoded), (0, len(tokens)))
                self.assertGreaterEqual(r.n_published, 32)
                cold = first.logits()
                # The session's own cache, kept in whole chunks (the tail is decoded again in the
                # same groups, so the logits stay those of a cold run).
                again = first.sync(tokens, store)
                self.assertGreaterEqual(again.n_reused, len(tokens) // 16 * 16)
                self.assertEqual((again.n_restored, again.n_reused + again.n_decoded),
                                 (0, len(tokens)))
                self.assertEqual(first.logits().tobytes(), cold.tobytes())
            store.wait_for_writes()
            stats = store.stats()
            self.assertGreaterEqual(stats.chunks, 2)
            self.assertEqual(stats.chunk_tokens, 16)

            with kvstash.Session.create(self.model, n_ctx=512) as second:
                r = second.sync(tokens, store)
                self.assertGreaterEqual(r.n_restored, 32)
                self.assertEqual(r.n_reused + r.n_decoded, len(tokens))
                self.assertEqual(second.logits().tobytes(), cold.tobytes())

            v = store.verify()
            self.assertEqual((v.chunks_bad, v.bad_report), (0, ""))
            self.assertGreaterEqual(store.clear(), 2)
            self.assertEqual(store.stats().chunks, 0)


class ModelAndLifetimes(Base):
    def test_text_and_identity(self):
        tokens = self.model.tokenize("Hello, world!", add_bos=False)
        self.assertTrue(tokens)
        # An SPM vocabulary's tokens of a text start with its space prefix.
        self.assertEqual(self.model.detokenize(tokens).lstrip(), "Hello, world!")
        self.assertEqual(len(self.model.fingerprint), 32)
        self.assertTrue(self.model.description)
        prompt = self.model.apply_chat_template(
            [{"role": "system", "content": "Be brief."}, ("user", "Hi")], template="chatml")
        self.assertIn("<|im_start|>user\nHi", prompt)
        self.assertTrue(prompt.endswith("<|im_start|>assistant\n"))

    def test_session_outlives_model_and_closed_handles_raise(self):
        m = kvstash.Model(model_path("KVSTASH_TEST_MODEL"))
        s = kvstash.Session.create(m, n_ctx=512)
        m.close()
        s.append(PREFIX)
        self.assertEqual(len(s.logits()), self.model.n_vocab)
        s.close()
        s.close()
        with self.assertRaises(kvstash.InvalidArgumentError):
            s.append("x")
        with self.assertRaises(kvstash.InvalidArgumentError):
            m.tokenize("x")

    def test_cancel_from_another_thread_stops_the_next_call(self):
        s = self.new_session(None, PREFIX)
        before = s.tokens
        t = threading.Thread(target=s.cancel)
        t.start()
        t.join()
        with self.assertRaises(kvstash.CancelledError):
            s.append(SUFFIX)
        self.assertEqual(s.tokens, before)
        s.append(SUFFIX)

    def test_llama_cpp_sampling_options(self):
        s = self.new_session(None, PREFIX, SUFFIX)
        g = s.generate(n_predict=8, temp=0, ignore_eos=True, repeat_penalty=1.3, repeat_last_n=32)
        self.assertEqual(len(g.tokens), 8)
        self.assertEqual(g.stop_reason, kvstash.StopReason.MAX_TOKENS)
        self.assertFalse(any(self.model.is_end_of_generation(t) for t in g.tokens))
        with kvstash.Session.create(self.model, n_ctx=512, n_threads_batch=1) as t:
            t.append(PREFIX)

    def test_integers_that_do_not_fit_are_refused_not_wrapped(self):
        with self.assertRaises(kvstash.InvalidArgumentError):
            self.model.detokenize([2**32 + 450])
        with self.assertRaises(kvstash.InvalidArgumentError):
            self.model.is_end_of_generation(2**32 + 2)
        with self.assertRaises(kvstash.InvalidArgumentError):
            kvstash.Session.create(self.model, n_ctx=2**32 + 256)
        s = self.new_session(None, PREFIX)
        before = s.tokens
        with self.assertRaises(kvstash.InvalidArgumentError):
            s.append_tokens([1, 2**32 + 450])
        with self.assertRaises(kvstash.InvalidArgumentError):
            s.generate(n_predict=2**32 + 2)
        self.assertEqual(s.tokens, before)

    def test_closing_a_model_waits_for_its_running_calls(self):
        model = kvstash.Model(model_path("KVSTASH_TEST_MODEL"))
        text = "word " * 1_000_000
        outcome = []

        def tokenize():
            try:
                outcome.append(len(model.tokenize(text)))
            except kvstash.KvstashError as e:
                outcome.append(e)

        t = threading.Thread(target=tokenize)
        t.start()
        time.sleep(0.1)  # the tokenize call is running (it takes seconds)
        model.close()
        t.join()
        # Either the call ran to its end before the free, or it found the model closed: never a
        # call into a freed handle (which showed as InternalError or a crash).
        self.assertEqual(len(outcome), 1)
        if isinstance(outcome[0], kvstash.KvstashError):
            self.assertIsInstance(outcome[0], kvstash.InvalidArgumentError)
            self.assertIn("closed", outcome[0].message)
        else:
            self.assertGreater(outcome[0], 500_000)

    def test_errors_carry_status_and_message(self):
        with self.assertRaises(kvstash.NotFoundError) as cm:
            kvstash.Model("/nonexistent/model.gguf")
        e = cm.exception
        self.assertEqual(e.status, kvstash.Status.NOT_FOUND)
        self.assertTrue(e.message)
        self.assertIn("not_found", str(e))
        with self.assertRaises(kvstash.InvalidArgumentError):
            kvstash.Session.create(self.model, flash_attn="sometimes")


if __name__ == "__main__":
    unittest.main()
