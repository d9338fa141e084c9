#!/usr/bin/python3
"""Exports Kiln's end-to-end test models to ONNX, with reference inputs and outputs.

Run with Debian's interpreter (torch 1.13, torchvision 0.14, onnx 1.12, numpy):

    /usr/bin/python3 models/export.py --out /tmp/kiln-models
    /usr/bin/python3 models/export.py --out DIR --set all      # default | coverage | all
    /usr/bin/python3 models/export.py --out DIR --models bert,gpt --force --opset 17

For each model NAME it writes
    DIR/NAME.onnx     TorchScript exporter (torch.onnx.export), do_constant_folding=True
    DIR/NAME.io.npz   the fixed inputs (keys = ONNX input names) and PyTorch's outputs for them
                      (keys = ONNX output names); float32 / int64, written with np.savez.
Models whose two files both exist are skipped unless --force. Files are written under a
temporary name and renamed, so an interrupted export never leaves a file that looks complete.

Weights are random but seeded (torch.manual_seed(0) before each model is built; torchvision
models use weights=None), models are in eval mode, and inputs are drawn from their own seeded
generator, so reruns produce the same weights, inputs and outputs on the same torch build.
The CNNs' BatchNorm running statistics are calibrated on a few seeded random batches first, so
that activations stay O(1) through the network instead of vanishing (see calibrate_batchnorm).

Model sets (--set; --models picks names instead): "default" (the four below), "coverage" (the
architectures after them, which widen op and pattern coverage), "all" (both).

Default models:
  resnet50, mobilenet_v2  torchvision; input "input" f32 [batch,3,224,224]; output "output".
  bert                    a BERT-base encoder written the way Hugging Face's BertModel is
                          (12 layers, hidden 768, 12 heads, intermediate 3072, erf GELU,
                          extended attention mask, tanh pooler); inputs "input_ids",
                          "attention_mask" i64 [batch,seq]; outputs "last_hidden_state"
                          [batch,seq,768] and "pooler_output" [batch,768].
  gpt                     a small pre-LN GPT decoder (4 layers, hidden 256, 4 heads, vocab 1024,
                          context 64) with a causal mask built in forward (Trilu + Where),
                          tanh-approximate GELU and a tied LM head; input "input_ids" i64
                          [batch,seq]; output "logits" [batch,seq,1024].

Coverage models:
  mobilenet_v3_small, efficientnet_b0, regnet_y_400mf, shufflenet_v2_x0_5, densenet121,
  squeezenet1_1, convnext_tiny
                          torchvision; input "input" f32 [batch,3,224,224]; output "output"
                          [batch,1000]. convnext_tiny's layer scales are re-drawn (see its builder).
  vit_b16_2layer          torchvision.models.VisionTransformer with ViT-B/16's structure (patch
                          16, hidden 768, 12 heads, MLP 3072) but 2 layers instead of 12; same
                          input/output as the CNNs; exported with autograd on (EXPORT_WITH_GRAD).
  yolov8_tiny             a YOLOv8-style detector (Conv-BN-SiLU, C2f with split/chunk, SPPF,
                          FPN/PAN neck with nearest Upsample + Concat, decoupled head with DFL,
                          anchors from arange/meshgrid in forward, top-100 via topk + gather);
                          input "images" f32 [batch,3,320,320]; outputs "boxes" f32
                          [batch,100,4] (cx,cy,w,h in pixels), "scores" f32 [batch,100], "labels"
                          and "indices" (anchor index) i64 [batch,100].
"""

import argparse
import inspect
import collections
import math
import os
import sys
import time

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_OPSET = 17
DEFAULT_MODELS = ("resnet50", "mobilenet_v2", "bert", "gpt")
COVERAGE_MODELS = ("mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "shufflenet_v2_x0_5",
                   "densenet121", "squeezenet1_1", "convnext_tiny", "vit_b16_2layer",
                   "yolov8_tiny")
ALL_MODELS = DEFAULT_MODELS + COVERAGE_MODELS
MODEL_SETS = {"default": DEFAULT_MODELS, "coverage": COVERAGE_MODELS, "all": ALL_MODELS}
# Exported with autograd enabled: under no_grad in eval mode, torch 1.13's nn.MultiheadAttention
# takes its fast path (aten::_native_multi_head_attention), which the ONNX exporter cannot
# export; with grad on (and parameters requiring grad) it runs the composite ops instead.
# PyTorch's reference outputs are computed on the same path as the export.
EXPORT_WITH_GRAD = frozenset({"vit_b16_2layer", "vit_b16"})


# ----------------------------------------------------------------------------------------------
# BERT, written module-for-module like transformers.models.bert.modeling_bert.BertModel.

class BertConfig:
    # The real BERT-base vocabulary size. The word-embedding table is then 30522x768 (about
    # 94 MB of the ~440 MB file); it is kept at full size so that the model has BERT-base's
    # real shapes, including a large Gather table.
    vocab_size = 30522
    hidden_size = 768
    num_hidden_layers = 12
    num_attention_heads = 12
    intermediate_size = 3072
    max_position_embeddings = 512
    type_vocab_size = 2
    layer_norm_eps = 1e-12
    hidden_dropout_prob = 0.1
    attention_probs_dropout_prob = 0.1
    initializer_range = 0.02
    pad_token_id = 0


class BertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                            padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer("position_ids",
                             torch.arange(config.max_position_embeddings).expand((1, -1)))
        self.register_buffer("token_type_ids",
                             torch.zeros((1, config.max_position_embeddings), dtype=torch.long))

    def forward(self, input_ids):
        input_shape = input_ids.size()
        seq_length = input_shape[1]
        position_ids = self.position_ids[:, :seq_length]
        # HF: with no token_type_ids given, the registered all-zero buffer is expanded.
        token_type_ids = self.token_type_ids[:, :seq_length].expand(input_shape[0], seq_length)

        inputs_embeds = self.word_embeddings(input_ids)
        token_type_embeddings = self.token_type_embeddings(token_type_ids)
        embeddings = inputs_embeds + token_type_embeddings
        embeddings = embeddings + self.position_embeddings(position_ids)
        embeddings = self.LayerNorm(embeddings)
        embeddings = self.dropout(embeddings)
        return embeddings


class BertSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def transpose_for_scores(self, x):
        new_x_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        x = x.view(new_x_shape)
        return x.permute(0, 2, 1, 3)

    def forward(self, hidden_states, attention_mask):
        mixed_query_layer = self.query(hidden_states)
        key_layer = self.transpose_for_scores(self.key(hidden_states))
        value_layer = self.transpose_for_scores(self.value(hidden_states))
        query_layer = self.transpose_for_scores(mixed_query_layer)

        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        attention_scores = attention_scores + attention_mask
        attention_probs = F.softmax(attention_scores, dim=-1)
        attention_probs = self.dropout(attention_probs)

        context_layer = torch.matmul(attention_probs, value_layer)
        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        new_context_layer_shape = context_layer.size()[:-2] + (self.all_head_size,)
        context_layer = context_layer.view(new_context_layer_shape)
        return context_layer


class BertSelfOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        return self.LayerNorm(hidden_states + input_tensor)


class BertAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden_states, attention_mask):
        self_outputs = self.self(hidden_states, attention_mask)
        return self.output(self_outputs, hidden_states)


class BertIntermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden_states):
        return F.gelu(self.dense(hidden_states))  # exact (erf) GELU, HF's "gelu"


class BertOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        return self.LayerNorm(hidden_states + input_tensor)


class BertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden_states, attention_mask):
        attention_output = self.attention(hidden_states, attention_mask)
        intermediate_output = self.intermediate(attention_output)
        return self.output(intermediate_output, attention_output)


class BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states, attention_mask):
        for layer_module in self.layer:
            hidden_states = layer_module(hidden_states, attention_mask)
        return hidden_states


class BertPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states):
        first_token_tensor = hidden_states[:, 0]
        return self.activation(self.dense(first_token_tensor))


class BertModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # As BertPreTrainedModel._init_weights.
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    def forward(self, input_ids, attention_mask):
        embedding_output = self.embeddings(input_ids)
        # HF's get_extended_attention_mask: [batch, seq] -> [batch, 1, 1, seq], 0 where attended
        # and -10000 where masked, broadcast-added to the attention scores.
        extended_attention_mask = attention_mask[:, None, None, :].to(dtype=embedding_output.dtype)
        extended_attention_mask = (1.0 - extended_attention_mask) * -10000.0
        sequence_output = self.encoder(embedding_output, extended_attention_mask)
        pooled_output = self.pooler(sequence_output)
        return sequence_output, pooled_output


# ----------------------------------------------------------------------------------------------
# GPT: a small nanoGPT-style pre-LayerNorm decoder.

class GPTConfig:
    vocab_size = 1024
    block_size = 64  # context length (wpe rows); the exported seq axis is dynamic up to this
    n_layer = 4
    n_head = 4
    n_embd = 256
    layer_norm_eps = 1e-5
    dropout = 0.1
    initializer_range = 0.02


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.head_dim = config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = self.head_dim  # a Python int, so the 1/sqrt(hs) scale is a true constant
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        # Causal mask built here (not a registered buffer), so the export holds Trilu + Where.
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))
        att = att.masked_fill(~causal, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class GPTMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        x = F.gelu(self.c_fc(x), approximate="tanh")
        return self.dropout(self.c_proj(x))


class GPTBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = GPTMLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([GPTBlock(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        self.lm_head.weight = self.wte.weight  # tied LM head

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    def forward(self, input_ids):
        t = input_ids.size(1)
        pos = torch.arange(0, t, dtype=torch.long, device=input_ids.device).unsqueeze(0)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


# ----------------------------------------------------------------------------------------------
# yolov8_tiny: a YOLOv8-style detector written in torch.nn, module-for-module like Ultralytics'
# (Conv / Bottleneck / C2f / SPPF / DFL / Detect, anchors made in forward), at a small width
# (16-64 channels) and with the post-processing (top-k over the anchors, box gather) inside the
# graph.

class YoloConv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + SiLU."""

    def __init__(self, c1, c2, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class YoloBottleneck(nn.Module):
    def __init__(self, c, shortcut=True):
        super().__init__()
        self.cv1 = YoloConv(c, c, 3)
        self.cv2 = YoloConv(c, c, 3)
        self.add = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class YoloC2f(nn.Module):
    """CSP bottleneck with two convolutions; the 2c-channel cv1 output is halved with
    chunk (use_split=False) or split (use_split=True), both exported as Split."""

    def __init__(self, c1, c2, n=1, shortcut=False, use_split=False):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = YoloConv(c1, 2 * self.c, 1)
        self.cv2 = YoloConv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(YoloBottleneck(self.c, shortcut) for _ in range(n))
        self.use_split = use_split

    def forward(self, x):
        if self.use_split:
            y = list(self.cv1(x).split((self.c, self.c), 1))
        else:
            y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class YoloSPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = YoloConv(c1, c_, 1)
        self.cv2 = YoloConv(c_ * 4, c2, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class YoloDFL(nn.Module):
    """Distribution focal loss integral: softmax over reg_max bins, then a fixed 1x1 conv whose
    weights are arange(reg_max) (the expected bin)."""

    def __init__(self, c1=16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x):
        b, _, a = x.shape  # batch, 4 * c1, anchors
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def yolo_make_anchors(feats, strides, offset=0.5):
    """Anchor centres and strides from the feature maps' shapes (arange + meshgrid in forward)."""
    anchor_points, stride_tensor = [], []
    for x, stride in zip(feats, strides):
        _, _, h, w = x.shape
        sx = torch.arange(w, dtype=x.dtype, device=x.device) + offset
        sy = torch.arange(h, dtype=x.dtype, device=x.device) + offset
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        anchor_points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_tensor.append(torch.full((h * w, 1), stride, dtype=x.dtype, device=x.device))
    return torch.cat(anchor_points), torch.cat(stride_tensor)


def yolo_dist2bbox(distance, anchor_points, dim=1):
    """(left, top, right, bottom) distances -> (cx, cy, w, h) boxes."""
    lt, rb = distance.chunk(2, dim)
    x1y1 = anchor_points - lt
    x2y2 = anchor_points + rb
    c_xy = (x1y1 + x2y2) / 2
    wh = x2y2 - x1y1
    return torch.cat((c_xy, wh), dim)


class YoloDetect(nn.Module):
    def __init__(self, nc, ch, strides, reg_max=16, max_det=100):
        super().__init__()
        self.nc = nc
        self.reg_max = reg_max
        self.no = nc + 4 * reg_max
        self.strides = strides
        self.max_det = max_det
        c2 = max(16, ch[0] // 4, 4 * reg_max)
        c3 = max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(YoloConv(x, c2, 3), YoloConv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1))
            for x in ch)
        self.cv3 = nn.ModuleList(
            nn.Sequential(YoloConv(x, c3, 3), YoloConv(c3, c3, 3), nn.Conv2d(c3, nc, 1))
            for x in ch)
        self.dfl = YoloDFL(reg_max)

    def bias_init(self, img_size):
        """As Ultralytics' Detect.bias_init: box-logit biases 1, class biases log(5 / nc /
        cells), so that the class scores start small (sigmoid not saturated near 1, where the
        top-k ranking would hang on ties of float32 values)."""
        with torch.no_grad():
            for a, b, s in zip(self.cv2, self.cv3, self.strides):
                a[-1].bias.fill_(1.0)
                b[-1].bias.fill_(math.log(5 / self.nc / (img_size / s) ** 2))

    def forward(self, xs):
        xs = [torch.cat((self.cv2[i](x), self.cv3[i](x)), 1) for i, x in enumerate(xs)]
        b = xs[0].shape[0]
        anchors, strides = (t.transpose(0, 1) for t in yolo_make_anchors(xs, self.strides))
        x_cat = torch.cat([xi.view(b, self.no, -1) for xi in xs], 2)
        box, cls = x_cat.split((4 * self.reg_max, self.nc), 1)
        dbox = yolo_dist2bbox(self.dfl(box), anchors.unsqueeze(0), dim=1) * strides  # [b,4,A]
        scores = cls.sigmoid()                                                      # [b,nc,A]
        # Post-processing: best class per anchor, the max_det best anchors, and their boxes.
        boxes = dbox.transpose(1, 2)                                                # [b,A,4]
        best, labels = scores.max(1)                                                # [b,A]
        top_scores, indices = best.topk(self.max_det, dim=1)                        # [b,k]
        top_boxes = boxes.gather(1, indices.unsqueeze(-1).expand(-1, -1, 4))        # [b,k,4]
        top_labels = labels.gather(1, indices)                                      # [b,k]
        return top_boxes, top_scores, top_labels, indices


class YoloV8Tiny(nn.Module):
    def __init__(self, nc=80, w=(16, 32, 64, 64, 64)):
        super().__init__()
        w0, w1, w2, w3, w4 = w
        # Backbone: P1/2 .. P5/32.
        self.b0 = YoloConv(3, w0, 3, 2)
        self.b1 = YoloConv(w0, w1, 3, 2)
        self.b2 = YoloC2f(w1, w1, 1, shortcut=True)
        self.b3 = YoloConv(w1, w2, 3, 2)
        self.b4 = YoloC2f(w2, w2, 2, shortcut=True, use_split=True)   # P3/8
        self.b5 = YoloConv(w2, w3, 3, 2)
        self.b6 = YoloC2f(w3, w3, 2, shortcut=True)                   # P4/16
        self.b7 = YoloConv(w3, w4, 3, 2)
        self.b8 = YoloC2f(w4, w4, 1, shortcut=True, use_split=True)
        self.b9 = YoloSPPF(w4, w4, 5)                                 # P5/32
        # Neck: FPN top-down, then PAN bottom-up.
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n12 = YoloC2f(w4 + w3, w3, 1)
        self.n15 = YoloC2f(w3 + w2, w2, 1, use_split=True)            # out P3
        self.n16 = YoloConv(w2, w2, 3, 2)
        self.n18 = YoloC2f(w2 + w3, w3, 1)                            # out P4
        self.n19 = YoloConv(w3, w3, 3, 2)
        self.n21 = YoloC2f(w3 + w4, w4, 1, use_split=True)            # out P5
        self.detect = YoloDetect(nc, (w2, w3, w4), strides=(8.0, 16.0, 32.0))

    def forward(self, x):
        x = self.b2(self.b1(self.b0(x)))
        p3 = self.b4(self.b3(x))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        n12 = self.n12(torch.cat((self.up(p5), p4), 1))
        o3 = self.n15(torch.cat((self.up(n12), p3), 1))
        o4 = self.n18(torch.cat((self.n16(o3), n12), 1))
        o5 = self.n21(torch.cat((self.n19(o4), p5), 1))
        return self.detect([o3, o4, o5])


# ----------------------------------------------------------------------------------------------
# Model table: each builder returns (module, inputs dict in ONNX-input order, output names,
# dynamic_axes).

def _inputs_generator():
    g = torch.Generator()
    g.manual_seed(1234)
    return g


def calibrate_batchnorm(model, shape, steps=2):
    """Sets BatchNorm running statistics from a few random batches.

    With freshly initialised running stats (mean 0, var 1), eval-mode BatchNorm is nearly the
    identity and activations shrink or grow geometrically with depth (MobileNetV2's logits come
    out around 1e-9). Real statistics keep activations O(1), as in a trained network, and make
    the BatchNorm folded into each Conv at export non-trivial.
    """
    g = torch.Generator()
    g.manual_seed(4321)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(*shape, generator=g))
    model.eval()


def build_resnet50():
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    calibrate_batchnorm(model, (8, 3, 224, 224))
    x = torch.randn(1, 3, 224, 224, generator=_inputs_generator())
    return (model, {"input": x}, ["output"],
            {"input": {0: "batch"}, "output": {0: "batch"}})


def build_mobilenet_v2():
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None)
    calibrate_batchnorm(model, (8, 3, 224, 224))
    x = torch.randn(1, 3, 224, 224, generator=_inputs_generator())
    return (model, {"input": x}, ["output"],
            {"input": {0: "batch"}, "output": {0: "batch"}})


def build_bert():
    torch.manual_seed(0)
    config = BertConfig()
    model = BertModel(config)
    seq = 128
    g = _inputs_generator()
    input_ids = torch.randint(1000, config.vocab_size, (1, seq), generator=g, dtype=torch.long)
    input_ids[0, 0] = 101  # [CLS]
    attention_mask = torch.ones(1, seq, dtype=torch.long)
    attention_mask[:, seq - 16:] = 0  # the last 16 positions are padding
    input_ids[:, seq - 16:] = config.pad_token_id
    input_ids[0, seq - 17] = 102  # [SEP]
    return (model, {"input_ids": input_ids, "attention_mask": attention_mask},
            ["last_hidden_state", "pooler_output"],
            {"input_ids": {0: "batch", 1: "seq"},
             "attention_mask": {0: "batch", 1: "seq"},
             "last_hidden_state": {0: "batch", 1: "seq"},
             "pooler_output": {0: "batch"}})


def build_gpt():
    torch.manual_seed(0)
    config = GPTConfig()
    model = GPT(config)
    input_ids = torch.randint(0, config.vocab_size, (1, config.block_size),
                              generator=_inputs_generator(), dtype=torch.long)
    return (model, {"input_ids": input_ids}, ["logits"],
            {"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}})


# Coverage set: more architectures, for the ops and patterns the exporter emits for them.

def _build_torchvision_classifier(ctor, calib_batch=8):
    """A torchvision classifier built by ctor() after torch.manual_seed(0), BatchNorm calibrated
    (when it has any), with the standard input "input" f32 [batch,3,224,224] -> "output"."""
    torch.manual_seed(0)
    model = ctor()
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        calibrate_batchnorm(model, (calib_batch, 3, 224, 224))
    model.eval()
    x = torch.randn(1, 3, 224, 224, generator=_inputs_generator())
    return (model, {"input": x}, ["output"],
            {"input": {0: "batch"}, "output": {0: "batch"}})


def build_mobilenet_v3_small():
    import torchvision
    return _build_torchvision_classifier(lambda: torchvision.models.mobilenet_v3_small(weights=None))


def build_efficientnet_b0():
    import torchvision
    return _build_torchvision_classifier(lambda: torchvision.models.efficientnet_b0(weights=None))


def build_regnet_y_400mf():
    import torchvision
    return _build_torchvision_classifier(lambda: torchvision.models.regnet_y_400mf(weights=None))


def build_shufflenet_v2_x0_5():
    import torchvision
    return _build_torchvision_classifier(lambda: torchvision.models.shufflenet_v2_x0_5(weights=None))


def build_densenet121():
    import torchvision
    return _build_torchvision_classifier(lambda: torchvision.models.densenet121(weights=None))


def build_squeezenet1_1():
    import torchvision
    return _build_torchvision_classifier(lambda: torchvision.models.squeezenet1_1(weights=None))


def build_convnext_tiny():
    import torchvision

    def ctor():
        model = torchvision.models.convnext_tiny(weights=None)
        # torchvision initialises every block's layer scale to 1e-6, which makes the residual
        # branches (depthwise conv, LayerNorm, MLP, GELU) invisible in the output at a 1e-4
        # tolerance. Seeded random scales (same graph, different initializer values) keep them
        # significant, as in a trained network.
        g = torch.Generator()
        g.manual_seed(4322)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("layer_scale"):
                    p.copy_(0.1 + 0.4 * torch.rand(p.shape, generator=g))
        return model
    return _build_torchvision_classifier(ctor)


def build_vit_b16():
    # vit_b16: torchvision's ViT-B/16 (12 encoder layers), for the GPU benchmark; not in the test
    # sets (344 MB of weights): export it with --models vit_b16.
    import torchvision

    def ctor():
        model = torchvision.models.vit_b_16(weights=None)
        with torch.no_grad():
            nn.init.normal_(model.heads.head.weight, std=0.02)
            nn.init.normal_(model.heads.head.bias, std=0.02)
        return model
    return _build_torchvision_classifier(ctor)


def build_vit_b16_2layer():
    # vit_b16_2layer: torchvision's VisionTransformer with ViT-B/16's structure (224x224 images,
    # 16x16 patches, hidden 768, 12 heads, MLP 3072) but 2 encoder layers instead of 12, to keep
    # the file small.
    import torchvision

    def ctor():
        model = torchvision.models.VisionTransformer(
            image_size=224, patch_size=16, num_layers=2, num_heads=12, hidden_dim=768,
            mlp_dim=3072)
        # torchvision zero-initialises the classification head (all-zero logits); give it
        # random weights so the output depends on the encoder.
        with torch.no_grad():
            nn.init.normal_(model.heads.head.weight, std=0.02)
            nn.init.normal_(model.heads.head.bias, std=0.02)
        return model
    return _build_torchvision_classifier(ctor)


def build_yolov8_tiny():
    torch.manual_seed(0)
    model = YoloV8Tiny()
    model.detect.bias_init(320)
    calibrate_batchnorm(model, (4, 3, 320, 320))
    x = torch.randn(1, 3, 320, 320, generator=_inputs_generator())
    return (model, {"images": x}, ["boxes", "scores", "labels", "indices"],
            {"images": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"},
             "labels": {0: "batch"}, "indices": {0: "batch"}})


BUILDERS = {
    "resnet50": build_resnet50,
    "mobilenet_v2": build_mobilenet_v2,
    "bert": build_bert,
    "gpt": build_gpt,
    "mobilenet_v3_small": build_mobilenet_v3_small,
    "efficientnet_b0": build_efficientnet_b0,
    "regnet_y_400mf": build_regnet_y_400mf,
    "shufflenet_v2_x0_5": build_shufflenet_v2_x0_5,
    "densenet121": build_densenet121,
    "squeezenet1_1": build_squeezenet1_1,
    "convnext_tiny": build_convnext_tiny,
    "vit_b16_2layer": build_vit_b16_2layer,
    "vit_b16": build_vit_b16,
    "yolov8_tiny": build_yolov8_tiny,
}


# ----------------------------------------------------------------------------------------------

def _to_numpy(t):
    a = t.detach().cpu().numpy()
    if a.dtype == np.float64:
        a = a.astype(np.float32)
    return np.ascontiguousarray(a)


def _tmp_name(path):
    # Keeps the real extension last (np.savez appends ".npz" to names that lack it).
    d, base = os.path.split(path)
    return os.path.join(d, ".tmp-%d-%s" % (os.getpid(), base))


def export_one(name, out_dir, opset):
    onnx_path = os.path.join(out_dir, name + ".onnx")
    io_path = os.path.join(out_dir, name + ".io.npz")
    model, inputs, output_names, dynamic_axes = BUILDERS[name]()
    model.eval()
    input_names = list(inputs)
    args = tuple(inputs[k] for k in input_names)
    # Models in EXPORT_WITH_GRAD are run and traced with autograd on (see there), the others
    # under no_grad.
    grad_mode = torch.enable_grad if name in EXPORT_WITH_GRAD else torch.no_grad

    with grad_mode():
        outputs = model(*args)
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    if len(outputs) != len(output_names):
        raise RuntimeError("%s: %d outputs, expected %d" % (name, len(outputs), len(output_names)))

    tmp_onnx = _tmp_name(onnx_path)
    tmp_io = _tmp_name(io_path)
    try:
        with grad_mode():
            # Newer torch (2.9+) defaults to the dynamo exporter; these models use the
            # TorchScript one everywhere, so the graphs match across torch versions.
            extra = {}
            if "dynamo" in inspect.signature(torch.onnx.export).parameters:
                extra["dynamo"] = False
            torch.onnx.export(model, args, tmp_onnx,
                              export_params=True,
                              opset_version=opset,
                              do_constant_folding=True,
                              input_names=input_names,
                              output_names=output_names,
                              dynamic_axes=dynamic_axes, **extra)
        arrays = {k: _to_numpy(v) for k, v in inputs.items()}
        for k, v in zip(output_names, outputs):
            arrays[k] = _to_numpy(v)
        np.savez(tmp_io, **arrays)
        # Check before publishing; the checker takes a path so that large models are not
        # parsed twice in memory.
        onnx.checker.check_model(tmp_onnx)
        os.replace(tmp_onnx, onnx_path)
        os.replace(tmp_io, io_path)
    finally:
        for p in (tmp_onnx, tmp_io):
            if os.path.exists(p):
                os.remove(p)
    return onnx_path, io_path


def describe(name, onnx_path, io_path, seconds):
    m = onnx.load(onnx_path)
    hist = collections.Counter(n.op_type for n in m.graph.node)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)

    def dims(vi):
        return "x".join(d.dim_param or str(d.dim_value) for d in vi.type.tensor_type.shape.dim)

    print("%s: %s (%.1f MB), opset %s, %d nodes, %d initializers%s" % (
        name, onnx_path, os.path.getsize(onnx_path) / 1e6, opset, len(m.graph.node),
        len(m.graph.initializer),
        "" if seconds is None else ", exported in %.1f s" % seconds))
    print("  inputs:  " + ", ".join("%s[%s]" % (i.name, dims(i)) for i in m.graph.input))
    print("  outputs: " + ", ".join("%s[%s]" % (o.name, dims(o)) for o in m.graph.output))
    with np.load(io_path) as io:
        print("  %s (%.1f MB): %s" % (io_path, os.path.getsize(io_path) / 1e6, ", ".join(
            "%s %s%s" % (k, io[k].dtype, list(io[k].shape)) for k in io.files)))
    print("  ops: " + ", ".join("%s=%d" % kv for kv in sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))))
    sys.stdout.flush()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--set", dest="model_set", choices=sorted(MODEL_SETS),
                   help="a model set: default (%s), coverage (%s) or all; default: default"
                   % (",".join(DEFAULT_MODELS), ",".join(COVERAGE_MODELS)))
    p.add_argument("--models",
                   help="comma-separated model names instead of a set, from: " + ",".join(ALL_MODELS))
    p.add_argument("--force", action="store_true", help="re-export models that already exist")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help="ONNX opset to export (default %d)" % DEFAULT_OPSET)
    a = p.parse_args(argv)

    if a.models is not None and a.model_set is not None:
        p.error("give --models or --set, not both")
    if a.models is not None:
        names = [n.strip() for n in a.models.split(",") if n.strip()]
    else:
        names = list(MODEL_SETS[a.model_set or "default"])
    unknown = [n for n in names if n not in BUILDERS]
    if unknown or not names:
        p.error("unknown model(s): %s (known: %s)" % (",".join(unknown), ",".join(ALL_MODELS)))
    os.makedirs(a.out, exist_ok=True)

    failed = []
    for name in names:
        onnx_path = os.path.join(a.out, name + ".onnx")
        io_path = os.path.join(a.out, name + ".io.npz")
        if not a.force and os.path.exists(onnx_path) and os.path.exists(io_path):
            print("%s: exists, skipped (use --force to re-export)" % name)
            describe(name, onnx_path, io_path, None)
            continue
        t0 = time.monotonic()
        try:
            export_one(name, a.out, a.opset)
        except Exception as e:  # report and go on with the other models
            print("%s: FAILED: %s: %s" % (name, type(e).__name__, e), file=sys.stderr)
            failed.append(name)
            continue
        describe(name, onnx_path, io_path, time.monotonic() - t0)
    if failed:
        print("failed: " + ",".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
