"""ComposableQuantizer: several quantizers over one model, earlier ones take precedence."""

from __future__ import annotations

from torch.fx import GraphModule, Node

from .quantizer import ANNOTATION_KEY, QuantizationAnnotation, Quantizer

__all__ = ["ComposableQuantizer"]


class ComposableQuantizer(Quantizer):
    """Run `quantizers` in order: transform_for_annotation, then annotate, then validate.

    A node annotated by an earlier quantizer belongs to it: a later quantizer that changes
    or replaces that annotation is a bug in the later quantizer, reported as a RuntimeError
    naming both. (Our own annotators never touch annotated nodes, so composing
    X86InductorQuantizer / XNNPACKQuantizer instances just fills in what earlier ones left.)
    Put the most specific quantizer first, e.g. `[EmbeddingQuantizer(), X86InductorQuantizer()]`.
    """

    def __init__(self, quantizers: list[Quantizer]) -> None:
        quantizers = list(quantizers)
        for q in quantizers:
            if not isinstance(q, Quantizer):
                raise TypeError(f"ComposableQuantizer takes Quantizer instances, got {type(q).__name__}")
        self.quantizers = quantizers

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        for q in self.quantizers:
            model = q.transform_for_annotation(model)
        return model

    def annotate(self, model: GraphModule) -> GraphModule:
        owner: dict[Node, tuple[Quantizer, QuantizationAnnotation, dict, object]] = {}
        for q in self.quantizers:
            self._check_untouched(model, owner, q)
            q.annotate(model)
            self._check_untouched(model, owner, q)
            for node in model.graph.nodes:
                ann = node.meta.get(ANNOTATION_KEY)
                if ann is not None and node not in owner:
                    owner[node] = (q, ann, dict(ann.input_qspec_map), ann.output_qspec)
        return model

    @staticmethod
    def _check_untouched(model: GraphModule, owner: dict, current: Quantizer) -> None:
        for node, (q, ann, inputs, output) in owner.items():
            now = node.meta.get(ANNOTATION_KEY)
            if now is not ann or ann.input_qspec_map != inputs or ann.output_qspec is not output:
                raise RuntimeError(
                    f"{type(current).__name__} changed the annotation of node {node.name}, which "
                    f"{type(q).__name__} (earlier in the ComposableQuantizer) had annotated; "
                    "a quantizer must skip nodes that already carry a 'quantization_annotation'"
                )

    def validate(self, model: GraphModule) -> None:
        for q in self.quantizers:
            q.validate(model)

    def prepare_obs_or_fq_callback(self, model: GraphModule, edge_or_node_to_obs_or_fq: dict) -> None:
        for q in self.quantizers:
            q.prepare_obs_or_fq_callback(model, edge_or_node_to_obs_or_fq)

    @property
    def last_report(self):
        """The last report of the final quantizer that keeps one (it recounts the whole graph)."""
        for q in reversed(self.quantizers):
            report = getattr(q, "last_report", None)
            if report is not None:
                return report
        return None
