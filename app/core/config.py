"""Service configuration: one pydantic-settings ``Settings``, read from ``PCB_*`` variables."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from app.core.model_files import default_card_path
from app.core.network import check_host_pattern
from app.core.rules import FailMinAreaMm2, FailMinCount, FailRule

#: The weights shipped in the repository, used when ``PCB_WEIGHTS_PATH`` is not set.
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "pcb_defect_unet.keras"
#: Tiles in the model at once on a CPU with the automatic settings: batch size x concurrent
#: calls. Each tile holds 150-300 MB of activations while it runs, and beyond 2 nothing was
#: gained on the 2-core Intel AMX and AMD machines measured (README "Benchmarks").
AUTO_CPU_TILES_IN_FLIGHT = 2
#: The batch ``auto`` takes before warm-up measures it (and without warm-up).
AUTO_BATCH_CAP = 2
#: The largest batch ``auto`` tries on a GPU, where larger batches pay and the activations are
#: in the GPU's memory.
AUTO_BATCH_CAP_GPU = 16
#: File name of the golden-board (pair) model, looked for beside the single model's weights
#: when ``PCB_PAIR_WEIGHTS_PATH`` is not set: in the repository that is
#: ``weights/pcb_pair_unet.keras``, in the image ``/app/weights/...``, in compose ``/models/...``.
DEFAULT_PAIR_WEIGHTS_NAME = "pcb_pair_unet.keras"

# Fixed limits: generous for any real client, and not worth a setting.
#: Non-file multipart fields per request.
MAX_FORM_FIELDS = 16
#: Longest accepted upload filename (what common filesystems allow).
MAX_FILENAME_CHARS = 255
#: Smallest accepted width or height of an image, in pixels.
MIN_IMAGE_SIDE = 8

#: What a key may do, each role including the ones before it: ``inspect`` (inspections and the
#: model's metadata), ``review`` (also reading records and reviewing them), ``admin`` (also
#: golden boards, exports and deleting records).
Role = Literal["inspect", "review", "admin"]
ROLES: tuple[Role, ...] = ("inspect", "review", "admin")

_KEY_SYNTAX = ("expected 'name:role:key,...' (role: inspect, review or admin) or a JSON list "
               'of {"name": "...", "role": "...", "key": "..."}')


class ApiKey(BaseModel):
    """One accepted API key: who holds it (recorded as the reviewer) and what it may do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    role: Role = "inspect"
    key: str = Field(min_length=1, repr=False)


# --- groups: each is PCB_<GROUP>_<FIELD> in the environment (e.g. PCB_CFX_BROKER_URL) --------
class _Group(BaseModel):
    # ignore, as at the top level: PCB_CFX_PASSWORD, say, is compose's, not a setting.
    model_config = ConfigDict(extra="ignore")


class PairSettings(_Group):
    """The golden-board (pair) model."""

    weights_path: Path | Literal[""] | None = Field(
        None,
        description="Its .keras file; unset: pcb_pair_unet.keras beside PCB_WEIGHTS_PATH "
        "(served if present); empty: no pair model. Its card: as the single model's.",
    )
    gating: Literal["on", "off"] = Field(
        "on",
        description="on: only tiles near a difference from the registered golden board go "
        "through the pair model (the single model skips blank tiles); off: every tile. "
        "Per request: ?gating=off.",
    )


class MetricsSettings(_Group):
    """A separate /metrics server, without a key."""

    port: int | None = Field(
        None, ge=1, le=65535,
        description="Serve /metrics on this port of PCB_METRICS_HOST, without a key, instead "
        "of on the API's port (where, with auth on, it needs a key).",
    )
    host: str = Field("127.0.0.1", description="Bind address of the PCB_METRICS_PORT server.")


class FailSettings(_Group):
    """The verdict rule: when a board fails (a request's product recipe may override it)."""

    # The bounds of the rules (app.core.rules), so that every value set here can be applied.
    rule: FailRule = Field(
        "count", description="Fail on the defect count, or on the total defect area."
    )
    min_count: FailMinCount = Field(1, description="With rule=count: defects to fail.")
    min_area_mm2: FailMinAreaMm2 = Field(
        0.0, description="With rule=area: total mm2 above which a board fails."
    )


class LimitsSettings(_Group):
    """What one request may send and take."""

    max_body_bytes: int = Field(
        50 * 1024 * 1024, ge=1024, description="Request body, counted as it arrives."
    )
    max_image_pixels: int = Field(
        100_000_000, ge=1, description="Pixels per image (also Pillow's bomb guard)."
    )
    max_inflight_pixels: int = Field(
        200_000_000, ge=1,
        description="Memory budget: pixels of the boards being inspected at once (a pair "
        "board counts twice). Each costs about 16 bytes while in flight; a board that does not "
        "fit gets 503 + Retry-After before any of it is computed. At least max_image_pixels.",
    )
    max_batch_files: int = Field(32, ge=1, description="Files per batch request.")
    request_timeout_s: float = Field(
        120.0, gt=0, description="Past it (plus the per-tile allowance) a request gets 504."
    )
    request_timeout_per_tile_s: float = Field(
        1.0, ge=0,
        description="Added to the timeout for each tile of the board beyond the first, so "
        "that a large board can finish at the defaults.",
    )

    @model_validator(mode="after")
    def _largest_board_fits_the_budget(self) -> LimitsSettings:
        # Otherwise a board that passes the size limit could never be admitted, even idle.
        if self.max_inflight_pixels < self.max_image_pixels:
            raise ValueError(
                f"max_inflight_pixels ({self.max_inflight_pixels:,}) must be at least "
                f"max_image_pixels ({self.max_image_pixels:,}), or the largest board accepted "
                "could never be admitted"
            )
        return self

    def request_timeout_for(self, tiles: int) -> float:
        """The timeout of a board of ``tiles`` tiles."""
        return self.request_timeout_s + self.request_timeout_per_tile_s * max(0, tiles - 1)


class ModelCalls(NamedTuple):
    """How one model is called, resolved for its device by :meth:`BatchingSettings.resolve`."""

    #: Tiles per call until (and unless) warm-up measures a better one.
    batch_size: int
    #: Warm-up measures batch sizes up to this one; 1: no measuring.
    calibrate_up_to: int
    #: Calls running at once.
    concurrency: int


class BatchingSettings(_Group):
    """How tiles are batched into model calls."""

    max_size: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = Field(
        "auto",
        description="Tiles per model call, at most. auto: measured at warm-up, the smallest "
        "of 1, 2 (CPU) or 1..16 (GPU) within 3% of the fastest per tile (on a CPU every tile "
        "of a batch holds 150-300 MB of activations while a larger batch gains little).",
    )
    concurrency: Annotated[int, Field(ge=1, le=8)] | Literal["auto"] = Field(
        "auto",
        description="Model calls running at once, per model. auto: 2 on a CPU (a call stalls "
        "whenever other work takes a core; a second call in flight uses that time), 1 on a GPU.",
    )
    max_wait_ms: float = Field(
        3.0, ge=0, le=1000, description="How long a model call waits to fill its batch."
    )
    max_queue_tiles: int = Field(
        256, ge=1, description="Tiles waiting for the model, at most; past it: 503."
    )

    def resolve(self, device: str) -> ModelCalls:
        """Batch size and concurrency of a model on ``device`` (``"cpu"`` or ``"gpu"``).

        With ``auto`` on a CPU the tiles in the model at once stay within
        :data:`AUTO_CPU_TILES_IN_FLIGHT` (two calls of one tile), which the memory budget's
        fixed part assumes; on a GPU one call of up to :data:`AUTO_BATCH_CAP_GPU` tiles.
        """
        if self.concurrency != "auto":
            concurrency = self.concurrency
        else:
            concurrency = 1 if device == "gpu" else AUTO_CPU_TILES_IN_FLIGHT
        if self.max_size != "auto":
            return ModelCalls(self.max_size, 1, concurrency)
        cap = AUTO_BATCH_CAP_GPU if device == "gpu" else max(
            1, AUTO_CPU_TILES_IN_FLIGHT // concurrency)
        return ModelCalls(min(cap, AUTO_BATCH_CAP), cap, concurrency)


class ImagesSettings(_Group):
    """Which boards' images the records keep (under images/ in PCB_DATA_DIR), and how long."""

    keep: Literal["none", "failed", "all"] = Field("failed", description="Whose images.")
    retention_days: float = Field(
        30.0, ge=0, description="Kept images older than this are removed; 0: no age limit."
    )
    retention_mb: float = Field(
        2048.0, ge=0,
        description="Kept images beyond this total (MiB) are removed, oldest first; 0: none.",
    )


class CfxSettings(_Group):
    """IPC-CFX messages over AMQP 1.0 (off while broker_url is unset)."""

    broker_url: str | None = Field(
        None, description="AMQP 1.0 broker, amqp[s]://[user[:password]@]host[:port]; unset: no "
        "CFX messages.",
    )
    address: str = Field("/queue/cfx", min_length=1,
                         description="Where messages go on the broker (node address).")
    handle: str = Field("pcb-inspect", min_length=1, max_length=128,
                        description="This endpoint's CFX handle (the envelope's Source).")
    password_file: Path | None = Field(
        None, description="File holding the broker password (a secret), instead of the URL's.")
    ca_file: Path | None = Field(None, description="amqps: CA bundle to verify the broker.")
    cert_file: Path | None = Field(None, description="amqps: client certificate (PEM).")
    key_file: Path | None = Field(None, description="amqps: client certificate's key.")

    @field_validator("broker_url", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


#: Settings that were renamed: old name (without ``PCB_``, lower case) -> new one. Set, the old
#: name stops the service with one line naming the new one.
RENAMED: dict[str, str] = {
    **{old: f"limits_{old}" for old in ("max_body_bytes", "max_image_pixels",
                                        "max_inflight_pixels", "max_batch_files",
                                        "request_timeout_s", "request_timeout_per_tile_s")},
    "max_batch_size": "batching_max_size",
    "model_concurrency": "batching_concurrency",
    "max_wait_ms": "batching_max_wait_ms",
    "max_queue_tiles": "batching_max_queue_tiles",
    "keep_images": "images_keep",
    "image_retention_days": "images_retention_days",
    "image_retention_mb": "images_retention_mb",
}
#: Settings that were removed, and what took their place.
REMOVED: dict[str, str] = {
    "model_card_path": "the card is <stem>.card.json beside PCB_WEIGHTS_PATH, else "
                       "model_card.json there",
    "pair_model_card_path": "the card is <stem>.card.json beside PCB_PAIR_WEIGHTS_PATH, else "
                            "model_card.json there",
    "tile_overlap": "the model card's input.tile_overlap",
    **{name: f"the model card's {where}, or per request ?{name}= (or a product's recipe)"
       for name, where in (("threshold", "thresholds.confidence"),
                           ("min_area_px", "thresholds.min_area_px"),
                           ("min_confidence", "thresholds.min_confidence"),
                           ("pixels_per_mm", "pixels_per_mm"))},
    "max_form_fields": f"fixed at {MAX_FORM_FIELDS}",
    "max_filename_chars": f"fixed at {MAX_FILENAME_CHARS}",
    "min_image_side": f"fixed at {MIN_IMAGE_SIDE}",
}


def retired_setting_error(name: str) -> str | None:
    """The one-line error for a renamed or removed setting ``name`` (field or ``PCB_`` name),
    or ``None`` when it is not one."""
    key = name.lower().removeprefix("pcb_")
    if key in RENAMED:
        return f"PCB_{key.upper()} was renamed PCB_{RENAMED[key].upper()}; set that instead"
    if key in REMOVED:
        return f"PCB_{key.upper()} was removed: {REMOVED[key]}; unset it"
    return None


class _RetiredEnvSource(PydanticBaseSettingsSource):
    """Passes renamed and removed ``PCB_*`` variables on, so that validation refuses them by
    name instead of ignoring them."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return {key: value for key, value in os.environ.items()
                if key.upper().startswith("PCB_") and retired_setting_error(key)}


class Settings(BaseSettings):
    """All settings of the service, read from ``PCB_*`` variables (case-insensitive).

    A group's field is ``PCB_<GROUP>_<FIELD>``, e.g. ``cfx.broker_url`` is
    ``PCB_CFX_BROKER_URL``; the same flat name (``cfx_broker_url=...``) works as a keyword.
    """

    model_config = SettingsConfigDict(
        env_prefix="PCB_", env_file=None, extra="ignore",
        env_nested_delimiter="_", env_nested_max_split=1,
    )

    # --- model -----------------------------------------------------------------------------
    weights_path: Path = Field(
        DEFAULT_WEIGHTS,
        description="The .keras weights file to serve; its card: <stem>.card.json beside it, "
        "else model_card.json.",
    )
    device: Literal["auto", "cpu", "gpu"] = Field("auto", description="Where the model runs.")
    precision: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Inference precision. auto: per model, bfloat16 on CPUs with AVX512_BF16/AMX "
        "or mixed float16 on a GPU where the model card records accuracy parity, else float32.",
    )
    intra_op_threads: int = Field(0, ge=0, description="TF intra-op threads; 0 = one per core.")
    inter_op_threads: int = Field(0, ge=0, description="TF inter-op threads; 0 = TF default.")
    warmup: bool = Field(True, description="Run one warm-up inference before reporting ready.")
    pair: PairSettings = Field(default_factory=PairSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    fail: FailSettings = Field(default_factory=FailSettings)

    # --- server ----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Bind address of `pcb-inspect serve`.")
    port: int = Field(8000, ge=1, le=65535, description="Port of `pcb-inspect serve`.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace_s: float = Field(
        20.0, gt=0, description="How long in-flight work may finish after SIGTERM."
    )
    # NoDecode: parsed below, so that the compact form is read as well as the JSON one.
    api_keys: Annotated[list[ApiKey], NoDecode] = Field(
        default_factory=list,
        description="Accepted API keys; empty turns auth off. 'name:role:key,...' or a JSON "
        "list of {\"name\", \"role\", \"key\"}; roles: inspect, review, admin.",
    )
    auth: Literal["auto", "on", "off"] = Field(
        "auto",
        description="auto: keys required when PCB_API_KEYS is set; without keys "
        "`pcb-inspect serve` binds loopback only and refuses any other PCB_HOST (exit 3). "
        "off: no keys, on any address, on purpose (PCB_API_KEYS must then be empty). on: "
        "PCB_API_KEYS must be set.",
    )
    # NoDecode: given as 'a.example,b.example' (or a JSON list), parsed below.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host headers accepted ('pcb.example,*.line.example'); any other gets "
        "400. Empty: any Host (off).",
    )
    forwarded_allow_ips: str = Field(
        "",
        description="Proxies whose X-Forwarded-For/-Proto are trusted by `pcb-inspect serve` "
        "(uvicorn's forwarded_allow_ips: IPs, CIDRs, or '*'). Empty: none, not even loopback.",
    )
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)

    # --- storage ---------------------------------------------------------------------------
    data_dir: Path = Field(
        Path("data"),
        description="Where golden boards, recipes, the SQLite records and kept images are "
        "stored; share it between replicas.",
    )
    golden_cache_mb: float = Field(
        256.0, ge=0, description="Memory bound of the cache of decoded golden boards (MiB)."
    )
    records: bool = Field(True, description="Record every inspection; false: none at all.")
    database_url: str | None = Field(
        None,
        description="Records database; unset: SQLite records.db in PCB_DATA_DIR (migrated at "
        "startup). postgresql+psycopg://... for several replicas (run `pcb-inspect db upgrade`).",
    )
    images: ImagesSettings = Field(default_factory=ImagesSettings)
    cfx: CfxSettings = Field(default_factory=CfxSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings, file_secret_settings,
                _RetiredEnvSource(settings_cls))

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_names(cls, data: Any) -> Any:
        # Keywords may use the environment's flat names (cfx_broker_url=...), and a retired
        # name, from the environment or a keyword, is refused naming its replacement.
        if not isinstance(data, dict):
            return data
        out: dict[str, Any] = {}
        flat: list[tuple[str, str, Any]] = []
        for key, value in data.items():
            error = retired_setting_error(key)
            if error:
                raise ValueError(error)
            group, _, field = key.lower().partition("_")
            if key not in cls.model_fields and group in _GROUPS and field in _GROUPS[group]:
                flat.append((group, field, value))
            else:
                out[key] = value
        for group, field, value in flat:  # after the nested values: a flat keyword wins
            current = out.get(group, {})
            if isinstance(current, BaseModel):
                current = current.model_dump(exclude_unset=True)
            out[group] = {**current, field: value}
        return out

    @field_validator("database_url", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, value: Any) -> Any:
        # compose passes PCB_DATABASE_URL=${PCB_DATABASE_URL:-}: empty means the default.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [h.strip() for h in text.split(",") if h.strip()]
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, hosts: list[str]) -> list[str]:
        return [check_host_pattern(h) for h in hosts]

    @model_validator(mode="after")
    def _auth_matches_keys(self) -> Settings:
        if self.auth == "on" and not self.api_keys:
            raise ValueError("PCB_AUTH=on but PCB_API_KEYS is empty; set the keys")
        if self.auth == "off" and self.api_keys:
            raise ValueError(
                "PCB_AUTH=off but PCB_API_KEYS is set; unset one of them (off means no keys)"
            )
        if self.metrics.port is not None and self.metrics.port == self.port:
            raise ValueError(
                f"PCB_METRICS_PORT={self.metrics.port} is the API's port; choose another"
            )
        return self

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text.startswith("["):
                return [_compact_key(i, k) for i, k in enumerate(text.split(","), start=1)
                        if k.strip()]
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"PCB_API_KEYS looks like a JSON list but is not valid JSON ({exc.msg}); "
                    + _KEY_SYNTAX
                ) from None
        if isinstance(value, list):
            return [_key_object(i, v) for i, v in enumerate(value, start=1)]
        return value

    @field_validator("api_keys")
    @classmethod
    def _unique_names(cls, keys: list[ApiKey]) -> list[ApiKey]:
        names = [k.name for k in keys]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            # The name is what a review records as its reviewer: it must tell keys apart.
            raise ValueError(f"api_keys: key names must be unique; {twice} appear twice")
        return keys

    @property
    def model_card_path(self) -> Path:
        """The single model's card, found beside its weights."""
        return default_card_path(self.weights_path)

    @property
    def pair_weights(self) -> Path | None:
        """The pair model's weights file, or ``None`` when the pair model is switched off."""
        if self.pair.weights_path is None:
            return self.weights_path.with_name(DEFAULT_PAIR_WEIGHTS_NAME)
        return self.pair.weights_path or None

    @property
    def pair_model_card_path(self) -> Path | None:
        """The pair model's card, found beside its weights (as the single model's)."""
        path = self.pair_weights
        return default_card_path(path) if path is not None else None

    @property
    def pair_weights_is_default(self) -> bool:
        """Whether the pair weights path was not configured (a missing file is then fine)."""
        return self.pair.weights_path is None

    @property
    def cfx_enabled(self) -> bool:
        """Whether inspections and reviews are published as CFX messages."""
        return self.cfx.broker_url is not None

    @property
    def golden_dir(self) -> Path:
        """The folder of the golden-board store."""
        return self.data_dir / "golden"

    @property
    def auth_enabled(self) -> bool:
        """Whether requests must carry an API key."""
        return bool(self.api_keys)

    def effective_intra_op_threads(self) -> int:
        """Intra-op threads to give TF: the setting, or the cores this process may use."""
        if self.intra_op_threads:
            return self.intra_op_threads
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1
        )


#: The fields of each group, for the flat names (``cfx_broker_url``).
_GROUPS: dict[str, frozenset[str]] = {
    name: frozenset(field.annotation.model_fields)
    for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, _Group)
}


def setting_names() -> list[str]:
    """Every setting by its environment name without ``PCB_``, lower case (``cfx_broker_url``)."""
    return [f"{name}_{field}" if name in _GROUPS else name
            for name in Settings.model_fields
            for field in (sorted(_GROUPS[name]) if name in _GROUPS else [""])]


def _compact_key(index: int, entry: str) -> ApiKey:
    # The key itself is never shown: it is a secret, and a mistyped one is still close to it.
    name, sep, rest = entry.strip().partition(":")
    role, sep2, key = rest.partition(":")
    if not (sep and sep2) or role not in ROLES:
        raise ValueError(f"PCB_API_KEYS entry {index} is not name:role:key; " + _KEY_SYNTAX)
    return _key_object(index, {"name": name.strip(), "role": role, "key": key})


def _key_object(index: int, entry: Any) -> ApiKey:
    # Checked here, not left to the list: pydantic would report a string entry of the JSON
    # form as "not a valid dictionary" without saying which form is expected.
    if not isinstance(entry, dict):
        raise ValueError(f"PCB_API_KEYS entry {index} is not an object; " + _KEY_SYNTAX)
    try:
        key = ApiKey.model_validate(entry)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "entry"
        shown = f" {err['input']!r}" if field in ("name", "role") else ""
        raise ValueError(
            f"PCB_API_KEYS entry {index}: {field}{shown}: {err['msg']}; " + _KEY_SYNTAX
        ) from None
    if not key.key.strip():
        raise ValueError(f"PCB_API_KEYS entry {index}: the key is blank")
    return key


@lru_cache
def get_settings() -> Settings:
    """Returns the process-wide settings, read once from the environment."""
    return Settings()
