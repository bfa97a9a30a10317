"""ctypes declarations of kvstash's C API (include/kvstash/kvstash.h), and the library lookup.

Mirrors the header one to one: the same names, ``ctypes.Structure`` classes with the same fields
in the same order, C enums as ``c_int``. The ownership rules are the header's: handles are freed
by their ``*_free``, out-buffers by ``kvstash_free``, accessors' ``const char*`` are borrowed from
their handle. The package (``kvstash/__init__.py``) wraps all of it; use this module only for what
that does not cover.

The library is found, in this order, at:
  1. ``$KVSTASH_LIBRARY`` (the path of libkvstash.so);
  2. ``$(pkg-config --variable=libdir kvstash)/libkvstash.so`` (set PKG_CONFIG_PATH to
     PREFIX/lib/pkgconfig for a private install prefix);
  3. ``ctypes.util.find_library("kvstash")`` (the system's linker paths).
"""
import ctypes
import ctypes.util
import enum
import os
import subprocess
from ctypes import (CFUNCTYPE, POINTER, Structure, c_bool, c_char_p, c_double, c_float, c_int,
                    c_int32, c_size_t, c_uint32, c_uint64, c_void_p)


class Status(enum.IntEnum):
    """kvstash_status."""
    OK = 0
    INVALID_ARGUMENT = 1  # the caller asked for something impossible
    NOT_FOUND = 2  # a file or model is missing
    CORRUPTION = 3  # a file's bytes are wrong: bad magic, checksum, truncated
    INCOMPATIBLE = 4  # a valid file that does not fit this model or context
    IO_ERROR = 5  # the operating system refused (ENOSPC, EIO, EACCES, ...)
    CONTEXT_FULL = 6  # the context has no room for more tokens
    INTERNAL = 7  # llama.cpp failed where kvstash's checks said it would not
    CANCELLED = 8  # Session.cancel() or a callback asked to stop
    OUT_OF_MEMORY = 9  # an allocation failed


class KvstashError(Exception):
    """A failed kvstash call: ``status`` (a Status, or an int the package does not know) and the
    library's one-sentence ``message``."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message

    def __str__(self):
        name = self.status.name.lower() if isinstance(self.status, Status) else str(self.status)
        return "%s (%s)" % (self.message, name)


class LibraryNotFoundError(KvstashError, ImportError):
    """libkvstash.so was not found (raised by ``import kvstash``)."""


# ---- Finding the library ---------------------------------------------------------------------

def _pkg_config_libdir():
    try:
        out = subprocess.run(["pkg-config", "--variable=libdir", "kvstash"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    libdir = out.stdout.strip()
    return libdir if out.returncode == 0 and libdir else None


def find_library():
    """The path (or linker name) of libkvstash.so, or raise LibraryNotFoundError."""
    tried = []
    env = os.environ.get("KVSTASH_LIBRARY")
    if env:
        if os.path.exists(env):
            return env
        raise LibraryNotFoundError(
            Status.NOT_FOUND,
            "KVSTASH_LIBRARY=%s does not exist; set it to the path of libkvstash.so "
            "(PREFIX/lib/libkvstash.so of an installed kvstash)" % env)
    tried.append("$KVSTASH_LIBRARY (unset)")
    libdir = _pkg_config_libdir()
    if libdir:
        path = os.path.join(libdir, "libkvstash.so")
        if os.path.exists(path):
            return path
        tried.append("pkg-config's libdir %s (no libkvstash.so there)" % libdir)
    else:
        tried.append("pkg-config kvstash (not found; PKG_CONFIG_PATH=PREFIX/lib/pkgconfig)")
    name = ctypes.util.find_library("kvstash")
    if name:
        return name
    tried.append("the system's library paths")
    raise LibraryNotFoundError(
        Status.NOT_FOUND,
        "cannot find the kvstash C library (libkvstash.so); tried %s. Install kvstash "
        "(cmake --install build --prefix PREFIX) and set KVSTASH_LIBRARY=PREFIX/lib/libkvstash.so "
        "or PKG_CONFIG_PATH=PREFIX/lib/pkgconfig" % ", ".join(tried))


def _load():
    path = find_library()
    try:
        return ctypes.CDLL(path)
    except OSError as e:
        raise LibraryNotFoundError(Status.NOT_FOUND,
                                   "cannot load the kvstash C library %s: %s" % (path, e)) from e


# ---- Types -----------------------------------------------------------------------------------

kvstash_token = c_int32


class kvstash_model_options(Structure):
    _fields_ = [("size", c_uint32), ("n_gpu_layers", c_int32), ("repack_weights", c_bool)]


class kvstash_chat_message(Structure):
    _fields_ = [("role", c_char_p), ("content", c_char_p)]


class kvstash_store_options(Structure):
    _fields_ = [("size", c_uint32), ("chunk_tokens", c_uint32), ("max_bytes", c_uint64),
                ("max_pending_bytes", c_uint64), ("create", c_bool), ("sync", c_bool),
                ("redis_url", c_char_p)]


class kvstash_store_stats(Structure):
    _fields_ = [("chunk_tokens", c_uint32), ("chunks", c_uint64), ("bytes", c_uint64),
                ("temp_files", c_uint64), ("namespaces", c_uint64), ("chunks_written", c_uint64),
                ("chunks_existing", c_uint64), ("chunks_dropped", c_uint64),
                ("bytes_written", c_uint64)]


class kvstash_gc_report(Structure):
    _fields_ = [("chunks_removed", c_uint64), ("bytes_removed", c_uint64),
                ("bytes_left", c_uint64), ("temp_files_removed", c_uint64)]


class kvstash_session_options(Structure):
    _fields_ = [("size", c_uint32), ("n_ctx", c_uint32), ("n_threads", c_int32),
                ("n_batch", c_uint32), ("n_ubatch", c_uint32), ("flash_attn", c_int),
                ("cache_type_k", c_char_p), ("cache_type_v", c_char_p),
                ("n_threads_batch", c_int32)]


class kvstash_open_options(Structure):
    _fields_ = [("size", c_uint32), ("n_ctx", c_uint32), ("n_room", c_uint32),
                ("n_threads", c_int32), ("flash_attn", c_int), ("cache_type_k", c_char_p),
                ("cache_type_v", c_char_p), ("n_threads_batch", c_int32)]


class kvstash_sync_result(Structure):
    _fields_ = [("n_reused", c_size_t), ("n_decoded", c_size_t), ("n_restored", c_size_t),
                ("n_published", c_size_t), ("restore_ms", c_double), ("decode_ms", c_double)]


class kvstash_sample_options(Structure):
    _fields_ = [("size", c_uint32), ("n_predict", c_int32), ("temp", c_float), ("top_k", c_int32),
                ("top_p", c_float), ("min_p", c_float), ("seed", c_uint32),
                ("stop", POINTER(c_char_p)), ("n_stop", c_size_t),
                ("repeat_penalty", c_float), ("repeat_last_n", c_int32), ("ignore_eos", c_bool)]


# The piece is not NUL-terminated: c_void_p, read with ctypes.string_at(piece, len).
kvstash_piece_fn = CFUNCTYPE(c_bool, c_void_p, c_size_t, c_void_p)
kvstash_progress_fn = CFUNCTYPE(None, c_uint64, c_uint64, c_void_p)


class kvstash_generation(Structure):
    _fields_ = [("text", c_void_p), ("text_len", c_size_t), ("tokens", POINTER(kvstash_token)),
                ("n_tokens", c_size_t), ("stop_reason", c_int)]


class kvstash_save_options(Structure):
    _fields_ = [("size", c_uint32), ("sync", c_bool), ("replace_any", c_bool)]


class kvstash_open_stats(Structure):
    _fields_ = [("map_ms", c_double), ("verify_ms", c_double), ("context_ms", c_double),
                ("restore_ms", c_double), ("total_ms", c_double), ("file_bytes", c_uint64)]


class kvstash_file_info(Structure):
    _fields_ = [("format_version", c_uint32), ("file_size", c_uint64), ("n_ctx", c_uint32),
                ("tokens", POINTER(kvstash_token)), ("n_tokens", c_size_t),
                ("kv_bytes", c_uint64), ("has_logits", c_bool), ("checksums_verified", c_bool),
                ("writer", c_char_p), ("llama_build", c_char_p), ("model_fingerprint", c_char_p),
                ("model_description", c_char_p), ("model_arch", c_char_p),
                ("cache_type_k", c_char_p), ("cache_type_v", c_char_p), ("flash_attn", c_bool)]


# (size, alignment) as gcc gives them on LP64 Linux; checked when the library is loaded.
LAYOUTS = {
    kvstash_model_options: (12, 4), kvstash_chat_message: (16, 8),
    kvstash_store_options: (40, 8), kvstash_store_stats: (72, 8), kvstash_gc_report: (32, 8),
    kvstash_session_options: (48, 8), kvstash_open_options: (48, 8),
    kvstash_sync_result: (48, 8), kvstash_sample_options: (64, 8), kvstash_generation: (40, 8),
    kvstash_save_options: (8, 4), kvstash_open_stats: (48, 8), kvstash_file_info: (120, 8),
}

# ---- Functions -------------------------------------------------------------------------------

_P = POINTER
_status = c_int
# name: (restype, argtypes). Handles are c_void_p.
_FUNCTIONS = {
    "kvstash_version": (c_char_p, []),
    "kvstash_last_error": (c_char_p, []),
    "kvstash_status_name": (c_char_p, [c_int]),
    "kvstash_free": (None, [c_void_p]),
    "kvstash_set_llama_logs": (_status, [c_int]),
    "kvstash_set_sigbus_guard": (None, [c_bool]),
    "kvstash_model_options_init": (None, [c_void_p, c_size_t]),
    "kvstash_model_load": (_status, [c_char_p, _P(kvstash_model_options), _P(c_void_p)]),
    "kvstash_model_free": (None, [c_void_p]),
    "kvstash_model_path": (c_char_p, [c_void_p]),
    "kvstash_model_description": (c_char_p, [c_void_p]),
    "kvstash_model_fingerprint": (c_char_p, [c_void_p]),
    "kvstash_model_n_vocab": (c_int32, [c_void_p]),
    "kvstash_model_n_ctx_train": (c_int32, [c_void_p]),
    "kvstash_model_tokenize": (_status, [c_void_p, c_char_p, c_size_t, c_bool,
                                         _P(_P(kvstash_token)), _P(c_size_t)]),
    "kvstash_model_detokenize": (_status, [c_void_p, _P(kvstash_token), c_size_t, _P(c_void_p),
                                           _P(c_size_t)]),
    "kvstash_model_is_end_of_generation": (c_bool, [c_void_p, kvstash_token]),
    "kvstash_model_apply_chat_template": (_status, [c_void_p, _P(kvstash_chat_message), c_size_t,
                                                    c_char_p, c_bool, _P(c_void_p)]),
    "kvstash_store_options_init": (None, [c_void_p, c_size_t]),
    "kvstash_store_open": (_status, [c_char_p, _P(kvstash_store_options), _P(c_void_p)]),
    "kvstash_store_free": (None, [c_void_p]),
    "kvstash_store_wait_for_writes": (_status, [c_void_p]),
    "kvstash_store_stats_get": (_status, [c_void_p, _P(kvstash_store_stats)]),
    "kvstash_store_gc": (_status, [c_void_p, c_uint64, _P(kvstash_gc_report)]),
    "kvstash_store_verify": (_status, [c_void_p, _P(c_uint64), _P(c_uint64), _P(c_void_p)]),
    "kvstash_store_clear": (_status, [c_void_p, c_char_p, _P(c_uint64)]),
    "kvstash_session_options_init": (None, [c_void_p, c_size_t]),
    "kvstash_open_options_init": (None, [c_void_p, c_size_t]),
    "kvstash_session_create": (_status, [c_void_p, _P(kvstash_session_options), _P(c_void_p)]),
    "kvstash_session_open": (_status, [c_void_p, c_char_p, _P(kvstash_open_options),
                                       _P(c_void_p)]),
    "kvstash_session_free": (None, [c_void_p]),
    "kvstash_session_append_text": (_status, [c_void_p, c_char_p, c_size_t]),
    "kvstash_session_append_tokens": (_status, [c_void_p, _P(kvstash_token), c_size_t]),
    "kvstash_session_sync": (_status, [c_void_p, _P(kvstash_token), c_size_t, c_void_p,
                                       _P(kvstash_sync_result)]),
    "kvstash_sample_options_init": (None, [c_void_p, c_size_t]),
    "kvstash_generation_clear": (None, [_P(kvstash_generation)]),
    "kvstash_session_generate": (_status, [c_void_p, _P(kvstash_sample_options),
                                           kvstash_piece_fn, c_void_p, _P(kvstash_generation)]),
    "kvstash_save_options_init": (None, [c_void_p, c_size_t]),
    "kvstash_session_save": (_status, [c_void_p, c_char_p, _P(kvstash_save_options)]),
    "kvstash_session_logits": (_status, [c_void_p, _P(_P(c_float)), _P(c_size_t)]),
    "kvstash_session_tokens": (_P(kvstash_token), [c_void_p, _P(c_size_t)]),
    "kvstash_session_n_ctx": (c_uint32, [c_void_p]),
    "kvstash_session_n_decoded": (c_size_t, [c_void_p]),
    "kvstash_session_open_stats": (_status, [c_void_p, _P(kvstash_open_stats)]),
    "kvstash_session_set_progress": (_status, [c_void_p, kvstash_progress_fn, c_void_p]),
    "kvstash_session_cancel": (None, [c_void_p]),
    "kvstash_inspect": (_status, [c_char_p, c_bool, _P(_P(kvstash_file_info))]),
    "kvstash_file_info_free": (None, [_P(kvstash_file_info)]),
}


def _declare(cdll):
    for name, (restype, argtypes) in _FUNCTIONS.items():
        fn = getattr(cdll, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return cdll


def _check_layouts():
    if ctypes.sizeof(c_void_p) != 8:
        return  # the table is for LP64
    for struct, want in LAYOUTS.items():
        got = (ctypes.sizeof(struct), ctypes.alignment(struct))
        if got != want:
            raise AssertionError("layout of %s: %s, the C compiler's is %s"
                                 % (struct.__name__, got, want))


_check_layouts()
lib = _declare(_load())


def defaults(struct, init):
    """``struct`` filled by its ``*_init`` function, which writes the library's defaults into at
    most ``sizeof(struct)`` bytes and sets ``size`` to that, so the library reads only the fields
    this package knows."""
    value = struct()
    init(ctypes.byref(value), ctypes.sizeof(struct))
    return value
