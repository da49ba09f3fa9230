"""Bench cases: one column of the comparison each, written ``backend[:precision[:knob=value,...]]``.

A case is an :class:`~masklab.settings.InferenceSettings` (the same object ``Segmenter(settings=...)``
takes), built from the run's base settings (model, weights, device) with ``.replace(...)``: the case
string names the backend, the precision and any of the :data:`KNOBS`. The one backend that is not a
:data:`~masklab.settings.BACKENDS` value is ``torchvision``, the baseline: torchvision's own
``model([image])`` call on the eager fp32 module those settings build (see :mod:`masklab.bench.baseline`).
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass

from masklab import Segmenter
from masklab.bench.baseline import TorchvisionRuntime
from masklab.errors import UsageError
from masklab.settings import BACKENDS, PRECISIONS, InferenceSettings

__all__ = ["BASELINE", "KNOBS", "BenchCase", "parse_case", "default_cases", "prepare_case", "build_case"]

#: the baseline case's backend name
BASELINE = "torchvision"
#: the InferenceSettings fields a case string may set (in the order labels list them) and their value type
KNOBS: dict[str, type] = {"min_size": int, "max_size": int, "proposals": int, "max_detections": int, "score_thresh": float}
#: generated images an int8 case calibrates on when no int8 model is prepared (seed 1: not the timed ones)
INT8_CALIB_IMAGES = 16


@dataclass(frozen=True)
class BenchCase:
    """One column of the comparison.

    ``settings``: what the case's Segmenter runs with (knobs None = the model's default);
    ``baseline``: time torchvision's own call instead of masklab's runtime (``settings.backend`` is then
    ``"torch"``: the eager fp32 module it builds is the one torchvision's call runs).
    """

    settings: InferenceSettings
    baseline: bool = False

    def __post_init__(self) -> None:
        if self.baseline and (self.settings.backend != "torch" or self.settings.precision != "fp32"):
            raise UsageError(
                f"the {BASELINE} baseline runs torchvision's eager fp32 module, found backend "
                f"{self.settings.backend!r} at precision {self.settings.precision!r}; use '{BASELINE}' or '{BASELINE}:fp32'"
            )

    @property
    def backend(self) -> str:
        return BASELINE if self.baseline else self.settings.backend

    @property
    def precision(self) -> str:
        return self.settings.precision

    @property
    def label(self) -> str:
        """The case string back, knobs spelled out, e.g. ``openvino:bf16:min_size=480,proposals=300``."""
        knobs = [f"{k}={getattr(self.settings, k)}" for k in KNOBS if getattr(self.settings, k) is not None]
        return ":".join([self.backend, self.precision] + ([",".join(knobs)] if knobs else []))

    def replace(self, **changes) -> BenchCase:
        """The same case with its settings changed (``case.replace(device="cpu")``)."""
        return BenchCase(self.settings.replace(**changes), baseline=self.baseline)


def parse_case(text: str, *, base: InferenceSettings | None = None) -> BenchCase:
    """``backend[:precision[:knob=value,...]]`` on top of ``base`` (default ``InferenceSettings()``),
    e.g. ``openvino:bf16:min_size=480,max_size=640,proposals=300``; precision defaults to fp32."""
    base = base if base is not None else InferenceSettings()
    parts = text.strip().split(":")
    if not parts[0] or len(parts) > 3:
        raise UsageError(f"a bench case is backend[:precision[:knob=value,...]], found {text!r}")
    backend = parts[0]
    if backend in PRECISIONS:  # `--case int8`: a precision where the backend goes
        raise UsageError(f"{backend!r} in case {text!r} is a precision; a case names its backend first, "
                         f"e.g. openvino:{backend} or auto:{backend}")
    if backend != BASELINE and backend not in BACKENDS:
        raise UsageError(
            f"unknown backend {backend!r} in case {text!r}; backends: {BASELINE} (baseline), "
            f"{', '.join(BACKENDS)}{_did_you_mean(backend, (BASELINE, *BACKENDS))}"
        )
    precision = parts[1] if len(parts) > 1 and parts[1] else "fp32"
    knobs = _parse_knobs(parts[2], text) if len(parts) == 3 and parts[2] else {}
    baseline = backend == BASELINE
    settings = base.replace(backend="torch" if baseline else backend, precision=precision, **knobs)
    return BenchCase(settings, baseline=baseline)


def _parse_knobs(text: str, case_text: str) -> dict:
    knobs = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key not in KNOBS:
            raise UsageError(
                f"unknown knob {key!r} in case {case_text!r}; knobs: {', '.join(KNOBS)} (knob=value)"
                + _did_you_mean(key, KNOBS)
            )
        if not value:
            raise UsageError(f"knob {key} in case {case_text!r} has no value: write {key}=VALUE")
        try:
            knobs[key] = KNOBS[key](value)
        except ValueError:
            raise UsageError(f"knob {key} needs a {KNOBS[key].__name__}, found {value!r}") from None
    return knobs


def _did_you_mean(value: str, valid) -> str:
    close = difflib.get_close_matches(value, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def default_cases(base: InferenceSettings | None = None) -> list[BenchCase]:
    """torchvision eager fp32 (reference), ``auto`` (the default ``Segmenter()``, its fast path prepared),
    our exact paths, bf16 (on a CPU without native bf16 it runs fp32: the row's "ran" column says so), and
    one knob setting; runtimes that are not installed are left out."""
    have_ov = importlib.util.find_spec("openvino") is not None
    texts = ["torchvision", "auto", "torch", "torch-fast"]
    if have_ov:
        texts.append("openvino")
    if importlib.util.find_spec("onnxruntime") is not None:
        texts.append("onnx")
    texts.append("torch-fast:bf16")
    if have_ov:
        texts += ["openvino:bf16", "openvino:bf16:min_size=480,max_size=640,proposals=300"]
    if have_ov and importlib.util.find_spec("nncf") is not None:
        texts.append("openvino:int8")
    return [parse_case(t, base=base) for t in texts]


def prepare_case(case: BenchCase, *, size_hw: tuple[int, int] = (480, 640), say=None) -> BenchCase:
    """An int8 case runs an int8 IR: the one ``masklab quantize`` prepared for its settings, else one the
    bench calibrates once on :data:`INT8_CALIB_IMAGES` generated ``size_hw`` images (cached under another
    name, so that ``precision="int8"`` never picks up a model calibrated on generated images). The case
    comes back with that file as its model; other cases come back as they are."""
    from masklab.bench.images import generated_images
    from masklab.export.quantize import ensure_quantized, quantized_path
    from masklab.models.loading import load_model
    from masklab.runtime import converted_path

    if case.precision != "int8" or case.baseline:
        return case
    loaded = load_model(case.settings)
    if loaded.export_format is not None:  # an int8 file already (or an error from its runtime)
        return case
    fp32_ir = converted_path(loaded, "openvino")
    path = quantized_path(fp32_ir)
    if not path.is_file():
        path = fp32_ir.with_name(f"{fp32_ir.stem}-int8-generated{fp32_ir.suffix}")
        if not path.is_file() and say is not None:
            say(f"  no int8 model prepared (masklab quantize): calibrating one on {INT8_CALIB_IMAGES} generated images")
        ensure_quantized(loaded, generated_images(INT8_CALIB_IMAGES, size_hw=size_hw, seed=1), fp32_ir=fp32_ir,
                         out=path, calib_name=f"{INT8_CALIB_IMAGES} generated images (masklab bench)")
    return BenchCase(case.settings.replace(model=str(path), weights=None))


def build_case(case: BenchCase) -> Segmenter:
    """The Segmenter a case times; the baseline's runs torchvision's own call on the eager module its
    settings built (:class:`~masklab.bench.baseline.TorchvisionRuntime`) in place of masklab's runtime."""
    seg = Segmenter(settings=case.settings)
    if case.baseline:  # the Segmenter takes no runtime of its own choosing: swap the one it picked
        seg.runtime = TorchvisionRuntime(seg.loaded.module)
    return seg
