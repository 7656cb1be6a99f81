"""anacuda.convert's transformer recipes: every Linear layer (subclasses, Hugging Face's Conv1D and
MultiheadAttention's projections included) becomes a ternary layer with 8-bit per-token inputs;
embeddings, norms and the output head stay in float; a ConversionReport says what was done."""

from __future__ import annotations

import copy
import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

from torch import nn

from .activation import NoiseHyperParams
from .attention import TernaryMultiheadAttention, disable_fast_path
from .layers import AlphaBlendWeight, ANAWeight
from .ternary import BitLinear, LearnedScaleANA, TernaryLinear

#: recipe name -> the layer every Linear becomes.
RECIPES = {"bitnet": BitLinear, "bitnet_ana": TernaryLinear}
_QUANTISED = (TernaryLinear, TernaryMultiheadAttention, NoiseHyperParams, ANAWeight, AlphaBlendWeight)
_NORMS = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
_NOT_ACTIVATIONS = (nn.MultiheadAttention, nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d)


@dataclass
class ConversionReport:
    """What anacuda.convert did, module by module (names as in ``model.named_modules()`` of the
    converted model); ``print(report)`` shows it as a list.

    converted: name -> "old type -> new type"; kept_float: name -> why it stays in float;
    activations_quantised: name of a quantiser -> what it quantises; activations_left: name of an
    activation function -> why it is not quantised."""

    recipe: Optional[str] = None
    converted: Dict[str, str] = field(default_factory=dict)
    kept_float: Dict[str, str] = field(default_factory=dict)
    activations_quantised: Dict[str, str] = field(default_factory=dict)
    activations_left: Dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"anacuda.convert (recipe={self.recipe!r}): {len(self.converted)} converted, "
                 f"{len(self.kept_float)} kept in float"]
        for title, d in (("converted", self.converted), ("kept in float", self.kept_float),
                         ("activations quantised", self.activations_quantised),
                         ("activations left in float", self.activations_left)):
            lines.append(f"{title}:" + ("" if d else " none"))
            lines += [f"  {name or '(model)'}: {what}" for name, what in d.items()]
        return "\n".join(lines)


def _conv1d_class():
    """transformers' Conv1D (GPT-2's Linear with a transposed weight), if transformers is loaded
    (a model holding one has loaded it)."""
    utils = sys.modules.get("transformers.pytorch_utils")
    return getattr(utils, "Conv1D", None)


def _is_activation(m: nn.Module) -> bool:
    module = type(m).__module__
    return ((module == "torch.nn.modules.activation" or module.startswith("transformers.activations"))
            and not isinstance(m, _NOT_ACTIVATIONS))


def _find_heads(model: nn.Module, head) -> List[str]:
    """Names of the output head(s) to keep in float: ``head="auto"``: the Hugging Face model's
    output embeddings (get_output_embeddings()); else every Linear whose weight is an Embedding's
    (tied); else the last Linear outside torch's attention and transformer layers. A name or a
    list of names: those; None: none."""
    names = {n for n, _ in model.named_modules()}
    if head is None:
        return []
    if isinstance(head, str) and head != "auto":
        head = [head]
    if not isinstance(head, str):
        if not isinstance(head, (list, tuple)):
            raise TypeError(f"anacuda.convert: head must be 'auto', None, a module name or a list of them, got "
                            f"{type(head).__name__}")
        head = list(head)
        bad = [h for h in head if not isinstance(h, str) or h not in names]
        if bad:
            raise ValueError(f"anacuda.convert: head names {bad} are not modules of the model")
        return head
    by_id = {id(m): n for n, m in model.named_modules()}
    get = getattr(model, "get_output_embeddings", None)
    if callable(get):  # a Hugging Face model knows its head (None: it has none)
        out = get()
        return [by_id[id(out)]] if isinstance(out, nn.Module) and id(out) in by_id else []
    linear_types = (nn.Linear,) + ((_conv1d_class(),) if _conv1d_class() is not None else ())
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    tied = [n for n, m in model.named_modules() if isinstance(m, linear_types) and id(m.weight) in embedded]
    if tied:
        return tied
    inside = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
    blocked = [n for n, m in model.named_modules() if isinstance(m, inside)]
    last = [n for n, m in model.named_modules() if isinstance(m, linear_types) and n  # a lone Linear is no head
            and not any(b == "" or n.startswith(b + ".") for b in blocked)]
    return last[-1:]


def convert_transformer(model: nn.Module, recipe: str, *, head: Union[str, List[str], None] = "auto", skip=(),
                        linear_options: Optional[dict] = None, inplace: bool = False):
    """See anacuda.convert (recipe="bitnet" / "bitnet_ana"). Returns the model, its
    ConversionReport, and what a user would expect converted that could not be (for a warning)."""
    layer_cls = RECIPES[recipe]
    options = dict(linear_options or {})
    options.setdefault("norm", False)  # a new RMSNorm would change the function the weights were trained for
    proto = layer_cls(2, 2, True, **options)  # bad options fail now, whatever the model holds
    model = model if inplace else copy.deepcopy(model)
    heads = _find_heads(model, head)
    conv1d = _conv1d_class()
    report = ConversionReport(recipe=recipe)
    a = proto.input_quant  # None: activation_bits=None
    act_bits = None if a is None else round(math.log2(a.quantizer.levels.numel()))
    act_what = None if a is None else f"{act_bits}-bit, {a.rule.replace('_', ' ')}"
    cannot: List[str] = []  # what a user would expect converted, and convert cannot

    def new_linear(m: nn.Module, transposed: bool) -> TernaryLinear:
        w = m.weight
        n_in, n_out = (w.shape[0], w.shape[1]) if transposed else (w.shape[1], w.shape[0])
        new = layer_cls(n_in, n_out, m.bias is not None, w.device, w.dtype, **options)
        # The same Parameter objects (exact, ties kept); Conv1D's (in, out) weight transposed.
        new.weight = nn.Parameter(w.detach().t().contiguous(), requires_grad=w.requires_grad) if transposed else w
        if m.bias is not None:
            new.bias = m.bias
        if isinstance(new.weight_quant, LearnedScaleANA):
            new.weight_quant.init_scale(new.weight)  # from the model's weight, not the placeholder's
        return new.train(m.training)

    def quantised_inputs(name: str, projections):
        """Notes the input quantisers of the layers `projections` (names inside `name`; [] for name)."""
        for p in (projections or [""]) if act_bits is not None else []:
            layer = ".".join(n for n in (name, p) if n)
            report.activations_quantised[f"{layer}.input_quant"] = f"the input of {layer}: {act_what}"

    def replacement(name: str, m: nn.Module) -> Optional[nn.Module]:
        """The module that replaces m; m itself where it stays as it is (in the report); None
        where the modules inside it are to be looked at."""
        kind = type(m).__name__
        if any((isinstance(s, type) and isinstance(m, s)) or
               (isinstance(s, str) and (name == s or name.startswith(s + "."))) for s in skip):
            report.kept_float[name] = f"{kind}: in skip"
            return m
        if name in heads:
            report.kept_float[name] = f"{kind}: the output head (head=None or head=[] converts it)"
            return m
        if isinstance(m, _QUANTISED):
            report.converted[name] = f"{kind}: already quantised, left as it is"
            return m
        if isinstance(m, nn.MultiheadAttention):
            if type(m).forward is not nn.MultiheadAttention.forward:
                report.kept_float[name] = f"{kind}: overrides MultiheadAttention.forward, which convert cannot keep"
                cannot.append(f"{name or '(model)'} ({kind})")
                return m
            new = TernaryMultiheadAttention.from_float(m, layer_cls, **options)
            quantised_inputs(name, ["in_proj_quant"] if new._qkv_same_embed_dim else
                             ["q_proj_quant", "k_proj_quant", "v_proj_quant"])
            quantised_inputs(name, ["out_proj"])
            report.converted[name] = (f"{kind} -> TernaryMultiheadAttention (in-projection and out_proj "
                                      f"{layer_cls.__name__})")
            return new
        if isinstance(m, nn.Linear) or (conv1d is not None and isinstance(m, conv1d)):
            forward = nn.Linear.forward if isinstance(m, nn.Linear) else conv1d.forward
            if type(m).forward is not forward:
                report.kept_float[name] = f"{kind}: overrides {forward.__qualname__}, which convert cannot keep"
                cannot.append(f"{name or '(model)'} ({kind})")
                return m
            new = new_linear(m, transposed=not isinstance(m, nn.Linear))
            report.converted[name] = f"{kind} -> {layer_cls.__name__}" + (
                " (weight transposed)" if not isinstance(m, nn.Linear) else "")
            quantised_inputs(name, [])
            return new
        return None

    def visit(prefix: str, parent: nn.Module):
        for child_name, child in list(parent.named_children()):
            name = f"{prefix}.{child_name}" if prefix else child_name
            new = replacement(name, child)
            if new is None:
                visit(name, child)
            elif new is not child:
                setattr(parent, child_name, new)

    root = replacement("", model)
    if root is None:
        visit("", model)
    else:
        model = root
    for m in model.modules():
        if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerEncoder)) and any(
                isinstance(q, _QUANTISED) for q in m.modules()):
            disable_fast_path(m)
    note = ("not quantised anywhere (activation_bits=None)" if act_bits is None else
            f"its output is quantised ({act_what}) where it enters a converted Linear")
    cannot += account_for_the_rest(model, report, note)
    return model, report, cannot


def account_for_the_rest(model: nn.Module, report: ConversionReport, act_note: str) -> List[str]:
    """Lists, in the report, every module with parameters and every activation function that the
    conversion did not touch. Returns those whose weights a user would expect quantised."""
    done = [d for d in list(report.converted) + list(report.kept_float) if d]
    unexpected = []
    for name, m in model.named_modules():
        if any(name == d or name.startswith(d + ".") for d in done):
            continue
        if isinstance(m, _QUANTISED):  # anacuda's own (and what it holds)
            done.append(name)
            continue
        if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)) and not isinstance(
                m.activation, nn.Module):
            fn = getattr(m.activation, "__name__", repr(m.activation))
            report.activations_left[f"{name}.activation" if name else "activation"] = (
                f"{fn} (a function): in float; {act_note}")
        if _is_activation(m):
            report.activations_left[name] = f"{type(m).__name__}: in float; {act_note}"
            continue
        own = dict(m.named_parameters(recurse=False))
        if not own:
            continue
        kind = type(m).__name__
        if isinstance(m, nn.Embedding) or kind.endswith(("Embedding", "Embeddings")):
            report.kept_float[name] = f"{kind}: an embedding (a table lookup; anacuda has no quantised embedding)"
        elif isinstance(m, _NORMS) or kind.endswith("Norm"):
            report.kept_float[name] = f"{kind}: a normalisation (kept in float, as BitNet keeps it)"
        else:
            shapes = ", ".join(f"{p} {tuple(t.shape)}" for p, t in own.items())
            report.kept_float[name] = f"{kind}: parameters {shapes}, not a layer convert converts"
            if any(t.dim() >= 2 for t in own.values()):
                unexpected.append(f"{name or '(model)'} ({kind}: {shapes})")
    return unexpected


def warn_float(what: List[str], stacklevel: int) -> None:
    warnings.warn("anacuda.convert: these weights stay in float, as convert cannot convert them (its report lists "
                  f"why): {'; '.join(what)}. Pass their names in skip= to keep them in float without this warning.",
                  stacklevel=stacklevel + 1)
