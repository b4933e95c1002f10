"""One declaration of what a detector expects and returns.

Every number that export, the service and training need about a model's input lives here, once
(the same idea as timm's ``pretrained_cfg``). The spec travels inside checkpoints and inside the
model repository's ``manifest.json``, so the service never needs the Python model class to know how
to crop and normalise for an engine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ModelKind = Literal["clip", "frame"]


@dataclass(frozen=True)
class CropRule:
    """How a face is cut out of a frame for this model.

    ``method="align"``: a similarity transform maps the detector's five landmarks (left eye, right
    eye, nose, left mouth corner, right mouth corner, in image coordinates) onto ``template``, given
    at ``template_size`` pixels and scaled to the model's input size. For clip models one transform
    is fitted jointly over all frames of the clip, so the face does not jitter inside the clip.

    ``method="box"``: a square centred on the detector box, ``scale`` times its longer side, resized
    to the input size.
    """

    method: Literal["align", "box"]
    scale: float = 1.0
    template: tuple[tuple[float, float], ...] | None = None
    template_size: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Input and output contract of one detector.

    Engines take ``input`` as float32 ``(N, 3, H, W)`` for frame models or ``(N, 3, T, H, W)`` for
    clip models, already normalised as ``(rgb / 255 - mean) / std``, and return ``logit`` of shape
    ``(N,)``: the log-odds that the face is fake. Each model module converts its reference output
    (sigmoid, 2-class softmax with either label order, patch averages) into that one convention, so
    ``sigmoid(logit)`` is P(fake) for every model.
    """

    name: str
    kind: ModelKind
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop: CropRule
    num_frames: int = 1
    color: Literal["RGB"] = "RGB"
    output: str = "logit of P(fake)"
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        """Shape of one engine input batch."""
        size = self.input_size
        if self.kind == "clip":
            return (batch, 3, self.num_frames, size, size)
        return (batch, 3, size, size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored in manifests and checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`; tuples are restored from JSON lists."""
        data = dict(data)
        crop = dict(data.pop("crop"))
        if crop.get("template") is not None:
            crop["template"] = tuple(tuple(float(v) for v in point) for point in crop["template"])
        data["mean"] = tuple(data["mean"])
        data["std"] = tuple(data["std"])
        return cls(crop=CropRule(**crop), **data)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Five-point face template at 256 px (left eye, right eye, nose tip, left and right mouth corner),
#: the alignment target of FTCN's reference (its test_tools). FTCN's spec crops with it, and the
#: BlazeFace wrapper places the mouth corners BlazeFace does not give at this template's spread.
FACE_TEMPLATE_256 = ((85.83, 85.78), (169.05, 84.34), (127.57, 137.00), (90.70, 174.70), (167.31, 173.37))
HALF_MEAN_STD = (0.5, 0.5, 0.5)

#: Name of an engine's optional second output: a per-patch fake logit map ``(N, h, w)`` over the
#: input crop, for models that have one (PCL-I2G's patch classifier). ``logit`` stays the first
#: output, so an engine with the map serves exactly as one without; the service draws the map as
#: a heat map only where the engine has it (``python -m export --heatmap``).
HEATMAP_OUTPUT = "heatmap"
