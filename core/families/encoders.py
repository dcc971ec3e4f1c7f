"""Bidirectional encoders that share BERT's graph shape: ONNX Runtime's BERT fusions apply to all of them
(optimum maps them the same way); each differs in inputs, positions or config names, which the model and
its tokenizer already handle."""

from core.families.base import Family, register_family

BERT = register_family(Family("bert", ("bert",), ort_fusion="bert"))
# No token_type_ids (the tokenizer gives none); config names dim / hidden_dim / n_heads / n_layers.
DISTILBERT = register_family(Family("distilbert", ("distilbert",), ort_fusion="bert",
                                    config_fields={"intermediate_size": "hidden_dim"}))
# Relative position bias inside attention; <s> </s> specials.
MPNET = register_family(Family("mpnet", ("mpnet",), ort_fusion="bert", fuses_attention=False))
# Byte-level BPE (RoBERTa) or Unigram (XLM-R) tokenizers; positions offset by padding_idx + 1.
ROBERTA = register_family(Family("roberta", ("roberta", "camembert"), ort_fusion="bert"))
XLM_ROBERTA = register_family(Family("xlm-roberta", ("xlm-roberta",), ort_fusion="bert"))
