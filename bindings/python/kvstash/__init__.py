"""Persist and reuse an LLM prompt's KV cache: Python bindings to kvstash's C API (ctypes).

    import kvstash

    model = kvstash.Model("model.gguf")
    with kvstash.Session.create(model) as s:
        s.append("You are a helpful assistant.")      # decoded once...
        s.save("system.kvs")                          # ...and kept on disk
    with kvstash.Session.open(model, "system.kvs") as s:
        s.append(" User: Hi! Assistant:")             # no positions, no re-decoding
        print(s.generate(n_predict=32).text)

Ownership. ``Model``, ``Session`` and ``Store`` own their C handle and free it in ``close()``
(also called by ``with`` and, as a last resort, by ``__del__``). A session keeps its model alive
inside the C library: closing the model first is fine. Everything the library returns in a buffer
(tokens, text, logits, generations, file information) is copied into Python objects and the
buffer freed before the call returns; nothing returned borrows from a handle.

Threads. ctypes releases the GIL during each C call. Models and stores may be shared by threads.
A session is used by one thread at a time: a second thread's call while one runs raises
InvalidArgumentError instead of corrupting it; ``Session.cancel()`` is the exception, callable from
any thread.

Errors. Every failure raises a KvstashError subclass (CorruptionError, IncompatibleError,
NotFoundError, ...) with ``.status`` and the library's one-sentence ``.message``.

Defaults. An option left at None takes the C library's default (its ``*_init`` function).
"""
from __future__ import annotations

import array
import codecs
import ctypes
import os
import queue
import threading
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Union

from . import _ffi
from ._ffi import KvstashError, LibraryNotFoundError, Status

__all__ = [
    "Model", "Session", "Store", "inspect", "version", "set_llama_logs", "SyncResult",
    "Generation", "StopReason", "FileInfo", "OpenStats", "StoreStats", "GcReport", "VerifyReport",
    "Status", "KvstashError", "LibraryNotFoundError", "InvalidArgumentError", "NotFoundError",
    "CorruptionError", "IncompatibleError", "IoError", "ContextFullError", "InternalError",
    "CancelledError", "OutOfMemoryError",
]

_lib = _ffi.lib
_c = ctypes
for _cls in (KvstashError, LibraryNotFoundError, Status):
    _cls.__module__ = __name__  # shown as kvstash.X in tracebacks

# ---- Errors ----------------------------------------------------------------------------------


class InvalidArgumentError(KvstashError):
    """The caller asked for something impossible."""


class NotFoundError(KvstashError):
    """A file or model is missing."""


class CorruptionError(KvstashError):
    """A file's bytes are wrong: bad magic, checksum, truncated."""


class IncompatibleError(KvstashError):
    """A valid file that does not fit this model or context."""


class IoError(KvstashError):
    """The operating system refused (ENOSPC, EIO, EACCES, ...)."""


class ContextFullError(KvstashError):
    """The context has no room for more tokens."""


class InternalError(KvstashError):
    """llama.cpp failed where kvstash's checks said it would not."""


class CancelledError(KvstashError):
    """Session.cancel() asked to stop."""


class OutOfMemoryError(KvstashError):
    """An allocation failed."""


_ERRORS = {
    Status.INVALID_ARGUMENT: InvalidArgumentError, Status.NOT_FOUND: NotFoundError,
    Status.CORRUPTION: CorruptionError, Status.INCOMPATIBLE: IncompatibleError,
    Status.IO_ERROR: IoError, Status.CONTEXT_FULL: ContextFullError,
    Status.INTERNAL: InternalError, Status.CANCELLED: CancelledError,
    Status.OUT_OF_MEMORY: OutOfMemoryError,
}


def _error(status, message) -> KvstashError:
    try:
        status = Status(status)
    except ValueError:
        return KvstashError(status, message)
    return _ERRORS.get(status, KvstashError)(status, message)


def _check(code: int) -> None:
    """Raises the error of a failed call, reading this thread's message right away."""
    if code != Status.OK:
        raise _error(code, _lib.kvstash_last_error().decode("utf-8", "replace"))


# ---- Helpers ---------------------------------------------------------------------------------

def _path(path) -> bytes:
    p = os.fsencode(path)
    if b"\0" in p:
        raise InvalidArgumentError(Status.INVALID_ARGUMENT, "path %r contains a NUL byte" % path)
    return p


def _cstr(what: str, s: str) -> bytes:
    b = s.encode("utf-8")
    if b"\0" in b:
        raise InvalidArgumentError(Status.INVALID_ARGUMENT, "%s contains a NUL byte" % what)
    return b


def _text(text: Union[str, bytes]) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8")


def _str(p: Optional[bytes]) -> str:
    return "" if p is None else p.decode("utf-8", "replace")


def _take_bytes(ptr: _c.c_void_p, n: int) -> bytes:
    """Copies n bytes of a library buffer and frees it."""
    try:
        return _c.string_at(ptr, n) if ptr.value and n else b""
    finally:
        _lib.kvstash_free(ptr)


_INT32_MIN, _INT32_MAX = -2**31, 2**31 - 1


def _token(token: int) -> int:
    """A token id as C sees it: refused, not wrapped, when it does not fit in int32."""
    if not _INT32_MIN <= token <= _INT32_MAX:
        raise InvalidArgumentError(Status.INVALID_ARGUMENT,
                                   "token %d does not fit in a 32-bit token id" % token)
    return token


def _tokens_array(tokens: Sequence[int]):
    return (_ffi.kvstash_token * len(tokens))(*[_token(t) for t in tokens])


def _options(struct, init, values: dict, convert=None):
    """struct's library defaults, overridden by the values that are not None."""
    c = _ffi.defaults(struct, init)
    for name, value in values.items():
        if value is not None:
            value = convert(name, value) if convert else value
            setattr(c, name, value)
            # ctypes wraps integers that do not fit the field: refuse them instead.
            if isinstance(value, int) and not isinstance(value, bool) and getattr(c, name) != value:
                raise InvalidArgumentError(Status.INVALID_ARGUMENT,
                                           "%s=%d is out of range" % (name, value))
    return c


class _Handle:
    """An owned C handle: freed once, by close(), the with statement or __del__.

    C calls go through _call(), which counts them: ctypes releases the GIL during a call, so
    another thread's close() waits until the handle's running calls return before freeing it."""
    _free = None  # the C free function, set by subclasses
    _handle = None
    _users = 0
    _idle = None  # threading.Condition, made on first use

    def _condition(self) -> threading.Condition:
        if self._idle is None:
            self._idle = threading.Condition()
        return self._idle

    def _call(self, fn, *args):
        """fn(handle, *args), the handle kept alive for the call."""
        idle = self._condition()
        with idle:
            handle = self._h()
            self._users += 1
        try:
            return fn(handle, *args)
        finally:
            with idle:
                self._users -= 1
                idle.notify_all()

    def close(self) -> None:
        idle = self._condition()
        with idle:
            handle, self._handle = self._handle, None  # no new calls from here on
            idle.wait_for(lambda: self._users == 0)
        if handle:
            type(self)._free(handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _h(self):
        if not self._handle:
            raise InvalidArgumentError(Status.INVALID_ARGUMENT,
                                       "the %s is closed" % type(self).__name__.lower())
        return self._handle


def version() -> str:
    """The library's version, e.g. "0.2.0"."""
    return _str(_lib.kvstash_version())


def set_llama_logs(mode: str) -> None:
    """Where llama.cpp's log lines go, process-wide: "host" (the callback installed before
    kvstash's; the default), "quiet" or "stderr"."""
    modes = {"host": 0, "quiet": 1, "stderr": 2}
    if mode not in modes:
        raise InvalidArgumentError(Status.INVALID_ARGUMENT,
                                   "llama logs mode %r is not one of %s" % (mode, sorted(modes)))
    _check(_lib.kvstash_set_llama_logs(modes[mode]))


def set_sigbus_guard(enabled: bool) -> None:
    """Whether kvstash may install its SIGBUS handler (chained to the previous one) when it maps a
    session file, so that a file truncated under it is an error, not a crash. False: no handler,
    files are read into memory instead. Process-wide; True by default."""
    _lib.kvstash_set_sigbus_guard(bool(enabled))


# ---- Model -----------------------------------------------------------------------------------

class Model(_Handle):
    """A loaded GGUF model. Shareable between threads and sessions.

    ``Model(path, n_gpu_layers=None, repack_weights=None)``: None takes the library's default
    (0 layers on a GPU backend; repacked weights on)."""
    _free = _lib.kvstash_model_free

    def __init__(self, path, n_gpu_layers: Optional[int] = None,
                 repack_weights: Optional[bool] = None):
        opts = _options(_ffi.kvstash_model_options, _lib.kvstash_model_options_init,
                        dict(n_gpu_layers=n_gpu_layers, repack_weights=repack_weights))
        out = _c.c_void_p()
        _check(_lib.kvstash_model_load(_path(path), _c.byref(opts), _c.byref(out)))
        self._handle = out.value

    def __repr__(self):
        return "kvstash.Model(%r)" % (self.path if self._handle else "<closed>")

    @property
    def path(self) -> str:
        return _str(self._call(_lib.kvstash_model_path))

    @property
    def description(self) -> str:
        """E.g. "llama 1B F16"."""
        return _str(self._call(_lib.kvstash_model_description))

    @property
    def fingerprint(self) -> str:
        """32 lowercase hex digits identifying the weights and metadata."""
        return _str(self._call(_lib.kvstash_model_fingerprint))

    @property
    def n_vocab(self) -> int:
        return self._call(_lib.kvstash_model_n_vocab)

    @property
    def n_ctx_train(self) -> int:
        return self._call(_lib.kvstash_model_n_ctx_train)

    def tokenize(self, text: Union[str, bytes], add_bos: bool = True) -> List[int]:
        """The tokens of ``text``; ``add_bos`` follows the model's vocabulary."""
        data = _text(text)
        tokens = _c.POINTER(_ffi.kvstash_token)()
        n = _c.c_size_t()
        _check(self._call(_lib.kvstash_model_tokenize, data, len(data), add_bos, _c.byref(tokens),
                                           _c.byref(n)))
        try:
            return tokens[:n.value]
        finally:
            _lib.kvstash_free(tokens)

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens`` (bytes that are not valid UTF-8 become U+FFFD)."""
        arr = _tokens_array(tokens)
        text, n = _c.c_void_p(), _c.c_size_t()
        _check(self._call(_lib.kvstash_model_detokenize, arr, len(arr), _c.byref(text),
                                             _c.byref(n)))
        return _take_bytes(text, n.value).decode("utf-8", "replace")

    def is_end_of_generation(self, token: int) -> bool:
        return bool(self._call(_lib.kvstash_model_is_end_of_generation, _token(token)))

    def apply_chat_template(self, messages: Iterable, template: Optional[str] = None,
                            add_assistant: bool = True) -> str:
        """The prompt text of ``messages`` (dicts with "role" and "content", or (role, content)
        pairs) in llama.cpp's built-in ``template`` (e.g. "chatml") or else the model's own."""
        pairs = [(m["role"], m["content"]) if isinstance(m, dict) else tuple(m) for m in messages]
        arr = (_ffi.kvstash_chat_message * len(pairs))(
            *[_ffi.kvstash_chat_message(_cstr("a chat message's role", r),
                                        _cstr("a chat message's content", c)) for r, c in pairs])
        name = _cstr("the template name", template) if template else None
        text = _c.c_void_p()
        _check(self._call(_lib.kvstash_model_apply_chat_template, arr, len(pairs), name,
                                                      add_assistant, _c.byref(text)))
        try:
            return _str(_c.string_at(text))
        finally:
            _lib.kvstash_free(text)


# ---- Store -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class StoreStats:
    chunk_tokens: int
    chunks: int
    bytes: int
    temp_files: int
    namespaces: int
    chunks_written: int  # this handle's background writer, from here on
    chunks_existing: int
    chunks_dropped: int
    bytes_written: int


@dataclass(frozen=True)
class GcReport:
    chunks_removed: int
    bytes_removed: int
    bytes_left: int
    temp_files_removed: int


@dataclass(frozen=True)
class VerifyReport:
    chunks_ok: int
    chunks_bad: int
    bad_report: str  # one "path: why" line per bad chunk ("" when none)


def _from_c(cls, c):
    return cls(**{f: getattr(c, f) for f in cls.__dataclass_fields__})


class Store(_Handle):
    """A prefix cache directory shared by processes (docs/STORE.md). Shareable between threads.
    close() waits for queued writes.

    ``Store(dir, chunk_tokens=None, max_bytes=None, max_pending_bytes=None, create=None,
    sync=None, redis_url=None)``: None takes the library's default (256 tokens a chunk for a new
    store, no byte budget, 1 GiB queued, create the directory, fsync chunks, no Redis tier).
    ``redis_url``: "redis://[user:password@]host:port[/db]", a Redis tier shared by several
    machines; Redis being down or full never fails a lookup, and the password is never printed."""
    _free = _lib.kvstash_store_free

    def __init__(self, dir, chunk_tokens: Optional[int] = None, max_bytes: Optional[int] = None,
                 max_pending_bytes: Optional[int] = None, create: Optional[bool] = None,
                 sync: Optional[bool] = None, redis_url: Optional[str] = None):
        # The bytes stay referenced (by redis_b) until kvstash_store_open has copied them.
        redis_b = None if redis_url is None else _cstr("redis_url", redis_url)
        opts = _options(_ffi.kvstash_store_options, _lib.kvstash_store_options_init,
                        dict(chunk_tokens=chunk_tokens, max_bytes=max_bytes,
                             max_pending_bytes=max_pending_bytes, create=create, sync=sync,
                             redis_url=redis_b))
        out = _c.c_void_p()
        _check(_lib.kvstash_store_open(_path(dir), _c.byref(opts), _c.byref(out)))
        self._handle = out.value

    def stats(self) -> StoreStats:
        s = _ffi.kvstash_store_stats()
        _check(self._call(_lib.kvstash_store_stats_get, _c.byref(s)))
        return _from_c(StoreStats, s)

    def gc(self, max_bytes: int) -> GcReport:
        """Removes dead writers' temp files, then least recently used chunks down to max_bytes."""
        r = _ffi.kvstash_gc_report()
        _check(self._call(_lib.kvstash_store_gc, max_bytes, _c.byref(r)))
        return _from_c(GcReport, r)

    def verify(self) -> VerifyReport:
        """Reads and checks every chunk."""
        ok, bad, report = _c.c_uint64(), _c.c_uint64(), _c.c_void_p()
        _check(self._call(_lib.kvstash_store_verify, _c.byref(ok), _c.byref(bad),
                                         _c.byref(report)))
        try:
            text = _str(_c.string_at(report)) if report.value else ""
        finally:
            _lib.kvstash_free(report)
        return VerifyReport(ok.value, bad.value, text)

    def clear(self, ns_hash: Optional[str] = None) -> int:
        """Removes every chunk, or those of namespace ``ns_hash`` (hex); returns how many."""
        removed = _c.c_uint64()
        ns = _cstr("the namespace hash", ns_hash) if ns_hash else None
        _check(self._call(_lib.kvstash_store_clear, ns, _c.byref(removed)))
        return removed.value

    def wait_for_writes(self) -> None:
        """Blocks until every chunk queued so far was written or dropped."""
        _check(self._call(_lib.kvstash_store_wait_for_writes))


# ---- Session ---------------------------------------------------------------------------------

class StopReason(IntEnum):
    END_OF_GENERATION = 0
    MAX_TOKENS = 1
    STOP_STRING = 2
    CONTEXT_FULL = 3
    CANCELLED = 4  # the piece callback returned False, or the stream was closed


@dataclass(frozen=True)
class SyncResult:
    n_reused: int  # tokens kept from the cache or restored from the store
    n_decoded: int  # tokens decoded now
    n_restored: int  # of n_reused: loaded from the store
    n_published: int  # tokens in new whole chunks queued for the store
    restore_ms: float
    decode_ms: float


@dataclass(frozen=True)
class Generation:
    """``text`` ends before a stop string's match. When the match starts inside a token, that
    token is not kept, but its bytes before the match end ``text``: at most one token's bytes of
    ``text`` are not in the session."""
    text: str
    tokens: List[int]  # the generated tokens the session keeps
    stop_reason: StopReason


@dataclass(frozen=True)
class OpenStats:
    map_ms: float
    verify_ms: float
    context_ms: float
    restore_ms: float
    total_ms: float
    file_bytes: int


_FLASH_ATTN = {"auto": 0, "off": 1, "on": 2, "as_saved": 3, False: 1, True: 2}


def _convert_session_option(name, value):
    if name == "flash_attn":
        if value not in _FLASH_ATTN:
            raise InvalidArgumentError(
                Status.INVALID_ARGUMENT,
                "flash_attn %r is not one of 'auto', 'on', 'off', 'as_saved', True, False" % value)
        return _FLASH_ATTN[value]
    if name.startswith("cache_type_"):
        return _cstr(name, value)
    return value


class Session(_Handle):
    """A llama.cpp context and the tokens it holds. Made by ``Session.create`` or
    ``Session.open``; keeps its model alive. One thread at a time (``cancel`` excepted)."""
    _free = _lib.kvstash_session_free

    def __init__(self, handle):
        """Internal: use Session.create() or Session.open()."""
        self._handle = handle
        self._busy = threading.Lock()  # held by the call running on the session
        self._stream_stop = None  # the Event that stops the open stream(), if any
        self._free_lock = threading.Lock()  # orders close() with cancel()

    @classmethod
    def create(cls, model: Model, n_ctx: Optional[int] = None, n_threads: Optional[int] = None,
               n_batch: Optional[int] = None, n_ubatch: Optional[int] = None,
               flash_attn=None, cache_type_k: Optional[str] = None,
               cache_type_v: Optional[str] = None,
               n_threads_batch: Optional[int] = None) -> "Session":
        """A fresh, empty session. None takes the library's default: n_ctx 4096 (0: the model's
        training context), all cores, n_batch 2048, n_ubatch 512, flash_attn "auto", f16 caches,
        n_threads_batch as n_threads.
        """
        opts = _options(_ffi.kvstash_session_options, _lib.kvstash_session_options_init,
                        dict(n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, n_ubatch=n_ubatch,
                             flash_attn=flash_attn, cache_type_k=cache_type_k,
                             cache_type_v=cache_type_v, n_threads_batch=n_threads_batch),
                        _convert_session_option)
        out = _c.c_void_p()
        _check(model._call(_lib.kvstash_session_create, _c.byref(opts), _c.byref(out)))
        return cls(out.value)

    @classmethod
    def open(cls, model: Model, path, n_ctx: Optional[int] = None, n_room: Optional[int] = None,
             n_threads: Optional[int] = None, flash_attn=None, cache_type_k: Optional[str] = None,
             cache_type_v: Optional[str] = None,
             n_threads_batch: Optional[int] = None) -> "Session":
        """Loads a session file saved from the same model; every check runs before a byte reaches
        llama.cpp. The session then holds the saved tokens: append after them. Everything that
        decides the KV bytes' meaning comes from the file; None means "as saved" (n_room: tokens
        you will add, so that n_ctx can be just big enough)."""
        opts = _options(_ffi.kvstash_open_options, _lib.kvstash_open_options_init,
                        dict(n_ctx=n_ctx, n_room=n_room, n_threads=n_threads,
                             flash_attn=flash_attn, cache_type_k=cache_type_k,
                             cache_type_v=cache_type_v, n_threads_batch=n_threads_batch),
                        _convert_session_option)
        out = _c.c_void_p()
        _check(model._call(_lib.kvstash_session_open, _path(path), _c.byref(opts),
                                 _c.byref(out)))
        return cls(out.value)

    def _enter(self):
        if not self._busy.acquire(blocking=False):
            raise InvalidArgumentError(
                Status.INVALID_ARGUMENT,
                "the session is in use by another call (a stream() not yet finished or closed, "
                "or another thread): a session is used by one thread at a time")
        if not self._handle:
            self._busy.release()
            self._h()
        return self._handle

    def _call(self, fn, *args):
        """fn(handle, *args), holding the session for the call."""
        h = self._enter()
        try:
            return fn(h, *args)
        finally:
            self._busy.release()

    def close(self) -> None:
        """Frees the session (waits for a call running on another thread; stops an open
        stream(), which then ends with StopReason.CANCELLED)."""
        stream_stop = self._stream_stop
        if stream_stop is not None:
            stream_stop.set()
        with self._busy:
            with self._free_lock:
                super().close()

    def cancel(self) -> None:
        """From any thread: the running append, sync or save raises CancelledError within
        milliseconds, the session as before it; when none runs, the next one does."""
        with self._free_lock:
            if self._handle:
                _lib.kvstash_session_cancel(self._handle)

    def __repr__(self):
        if not self._handle:
            return "<kvstash.Session closed>"
        return "<kvstash.Session n_ctx=%d tokens=%d>" % (self.n_ctx, len(self.tokens))

    def append(self, text: Union[str, bytes]) -> None:
        """Decodes ``text`` after what the session holds (the first text of an empty session gets
        BOS). On failure the session is as it was."""
        data = _text(text)
        _check(self._call(_lib.kvstash_session_append_text, data, len(data)))

    def append_tokens(self, tokens: Sequence[int]) -> None:
        """Decodes ``tokens`` after what the session holds. On failure the session is as it was."""
        arr = _tokens_array(tokens)
        _check(self._call(_lib.kvstash_session_append_tokens, arr, len(arr)))

    def sync(self, tokens: Sequence[int], store: Optional[Store] = None) -> SyncResult:
        """Makes the session hold exactly ``tokens``, keeping the longest common prefix and
        decoding only the tail. With a store, the longest stored prefix of whole chunks is
        restored and new chunks are published in the background."""
        arr = _tokens_array(tokens)
        r = _ffi.kvstash_sync_result()
        if store is None:
            _check(self._call(_lib.kvstash_session_sync, arr, len(arr), None, _c.byref(r)))
        else:  # the store too is kept alive for the call
            _check(store._call(lambda h: self._call(_lib.kvstash_session_sync, arr, len(arr), h,
                                                    _c.byref(r))))
        return _from_c(SyncResult, r)

    def generate(self, n_predict: Optional[int] = None, temp: Optional[float] = None,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 min_p: Optional[float] = None, seed: Optional[int] = None,
                 stop: Optional[Sequence[str]] = None,
                 on_piece: Optional[Callable[[str], Optional[bool]]] = None,
                 repeat_penalty: Optional[float] = None, repeat_last_n: Optional[int] = None,
                 ignore_eos: Optional[bool] = None) -> Generation:
        """Samples until a stop condition; the generated tokens become part of the session.

        None takes the library's default: n_predict 128 (< 0: until the end of generation),
        temp 0 (greedy), top_k 40, top_p 0.95, min_p 0.05, a random seed, repeat_penalty 1 (off)
        over the last repeat_last_n 64 tokens, ignore_eos False. The text stops
        before the first match of a ``stop`` string. ``on_piece(text)`` gets each piece as soon as
        it is final (whole characters); returning False stops (StopReason.CANCELLED). An exception
        it raises stops the generation and is re-raised here."""
        stops = [_cstr("a stop string", s) for s in (stop or [])]
        stop_arr = (_c.c_char_p * len(stops))(*stops)
        opts = _options(_ffi.kvstash_sample_options, _lib.kvstash_sample_options_init,
                        dict(n_predict=n_predict, temp=temp, top_k=top_k, top_p=top_p,
                             min_p=min_p, seed=seed, repeat_penalty=repeat_penalty,
                             repeat_last_n=repeat_last_n, ignore_eos=ignore_eos))
        if stops:
            opts.stop = _c.cast(stop_arr, _c.POINTER(_c.c_char_p))
            opts.n_stop = len(stops)

        raised = []
        callback = _ffi.kvstash_piece_fn()  # NULL: no callback
        if on_piece is not None:
            decoder = codecs.getincrementaldecoder("utf-8")("replace")

            def trampoline(piece, length, _user_data):
                if raised:
                    return False
                try:
                    text = decoder.decode(_c.string_at(piece, length) if length else b"")
                    return not text or on_piece(text) is not False
                except BaseException as e:  # never into C: kept, re-raised after the call
                    raised.append(e)
                    return False

            callback = _ffi.kvstash_piece_fn(trampoline)  # alive until the call returns
        out = _ffi.kvstash_generation()
        h = self._enter()
        try:
            code = _lib.kvstash_session_generate(h, _c.byref(opts), callback, None,
                                                 _c.byref(out))
            try:
                _check(code)
                text = _c.string_at(out.text, out.text_len) if out.text else b""
                result = Generation(text.decode("utf-8", "replace"), out.tokens[:out.n_tokens],
                                    StopReason(out.stop_reason))
            finally:
                _lib.kvstash_generation_clear(_c.byref(out))
        finally:
            self._busy.release()
        if raised:
            raise raised[0]
        if on_piece is not None:
            rest = decoder.decode(b"", final=True)
            if rest:
                on_piece(rest)
        return result

    def stream(self, **sample) -> Iterator[str]:
        """Yields the generated text piece by piece as it is produced (``generate``'s options).

        The C call runs on a worker thread that stays at most a piece ahead of the consumer;
        closing the generator early (``break``, ``close()``, garbage collection) stops the
        generation (StopReason.CANCELLED) and joins the worker. The generator's return value
        (``StopIteration.value``) is the Generation. While it runs, other calls on the session
        raise InvalidArgumentError."""
        pieces: queue.Queue = queue.Queue(maxsize=1)
        stopped = threading.Event()
        done = object()
        outcome = {}

        def put(item) -> bool:  # False once the consumer is gone
            while not stopped.is_set():
                try:
                    pieces.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        def run():
            try:
                outcome["generation"] = self.generate(on_piece=put, **sample)
            except BaseException as e:
                outcome["error"] = e
            finally:
                put(done)

        worker = threading.Thread(target=run, name="kvstash-stream", daemon=True)
        self._stream_stop = stopped
        worker.start()
        try:
            while True:
                try:
                    item = pieces.get(timeout=0.05)
                except queue.Empty:
                    # Stopped from close(): the worker ends without handing over `done`.
                    if stopped.is_set() and not worker.is_alive() and pieces.empty():
                        break
                    continue
                if item is done:
                    break
                yield item
        finally:
            stopped.set()
            worker.join()
            self._stream_stop = None
        if "error" in outcome:
            raise outcome["error"]
        return outcome["generation"]

    def save(self, path, sync: Optional[bool] = None, replace_any: Optional[bool] = None) -> None:
        """Writes the session to ``path`` atomically and durably (sync: fsync, default on); on
        failure the previous file is untouched. ``replace_any`` replaces a file that is not a
        kvstash session (default off)."""
        opts = _options(_ffi.kvstash_save_options, _lib.kvstash_save_options_init,
                        dict(sync=sync, replace_any=replace_any))
        _check(self._call(_lib.kvstash_session_save, _path(path), _c.byref(opts)))

    def logits(self) -> array.array:
        """The logits for the next token: array('f') of n_vocab floats."""
        ptr, n = _c.POINTER(_c.c_float)(), _c.c_size_t()
        _check(self._call(_lib.kvstash_session_logits, _c.byref(ptr), _c.byref(n)))
        try:
            result = array.array("f")
            result.frombytes(_c.string_at(ptr, n.value * _c.sizeof(_c.c_float)))
            return result
        finally:
            _lib.kvstash_free(ptr)

    @property
    def tokens(self) -> List[int]:
        """The tokens the session holds (a copy)."""
        n = _c.c_size_t()

        def copy(h):
            p = _lib.kvstash_session_tokens(h, _c.byref(n))
            return p[:n.value] if n.value else []

        return self._call(copy)

    @property
    def n_ctx(self) -> int:
        return self._call(_lib.kvstash_session_n_ctx)

    @property
    def n_decoded(self) -> int:
        """Tokens decoded by this session object (loading a file decodes none)."""
        return self._call(_lib.kvstash_session_n_decoded)

    def open_stats(self) -> OpenStats:
        """Where the time of the Session.open that made this session went (zeros for create)."""
        s = _ffi.kvstash_open_stats()
        _check(self._call(_lib.kvstash_session_open_stats, _c.byref(s)))
        return _from_c(OpenStats, s)


# ---- Inspect ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileInfo:
    format_version: int
    file_size: int
    n_ctx: int  # the context the KV was computed in
    tokens: List[int]
    kv_bytes: int
    has_logits: bool
    checksums_verified: bool
    writer: str  # "kvstash 0.2.0"
    llama_build: str  # llama.cpp commit
    model_fingerprint: str
    model_description: str
    model_arch: str
    cache_type_k: str
    cache_type_v: str
    flash_attn: bool


def inspect(path, verify_checksums: bool = True) -> FileInfo:
    """Reads and checks a session file's structure (and checksums) without a model."""
    out = _c.POINTER(_ffi.kvstash_file_info)()
    _check(_lib.kvstash_inspect(_path(path), verify_checksums, _c.byref(out)))
    try:
        i = out.contents
        values = {}
        for name in FileInfo.__dataclass_fields__:
            v = getattr(i, name)
            values[name] = _str(v) if isinstance(v, (bytes, type(None))) else v
        values["tokens"] = i.tokens[:i.n_tokens] if i.n_tokens else []
        return FileInfo(**values)
    finally:
        _lib.kvstash_file_info_free(out)
