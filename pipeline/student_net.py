"""The interface every student network has, image, feature or text (pipeline/models.py,
pipeline/text_models.py): a teacher can read any student's states the same way,

    model(x) == model.classifier(model.features(x))

`features(x)` is the penultimate representation [N, feature_dim]; `feature_maps(x)` lists earlier
states, each pooled to [N, C_k] (global average pooling for conv maps), from deepest-but-one to
shallowest; `features_and_maps(x)` gives both from one pass (in train mode every pass updates the
BatchNorm running statistics, so reading both separately would count the batch twice).
"""

from __future__ import annotations

from torch import Tensor, nn


class StudentNet(nn.Module):
    """The shared interface; subclasses set `classifier` and `feature_dim` and define `_states`."""

    classifier: nn.Linear
    feature_dim: int

    def _states(self, x: Tensor) -> list[Tensor]:
        """Internal states from shallowest to deepest; the last one is `features(x)`."""
        raise NotImplementedError

    def features_and_maps(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        *earlier, last = self._states(x)
        return last, [s.mean(dim=(2, 3)) if s.dim() == 4 else s for s in reversed(earlier)]

    def features(self, x: Tensor) -> Tensor:
        return self._states(x)[-1]

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        return self.features_and_maps(x)[1]

    def forward(self, x: Tensor, states: bool = False):
        """Logits; with `states`, (logits, features, pooled earlier maps) from one forward
        (a teacher reading the student's internal states, through functional_call too)."""
        if not states:
            return self.classifier(self.features(x))
        features, maps = self.features_and_maps(x)
        return self.classifier(features), features, maps

    def _init_weights(self) -> None:
        # He et al. 2015 init for convs (fan_out keeps backward variance steady); Linear default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
