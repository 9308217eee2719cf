"""An independent, plain re-computation of CLIP straight from a state dict.

Written differently from clipviz.model on purpose: no nn.Modules, sequence-first tensors,
attention as an explicit softmax(QKᵀ/√d) whose probabilities are returned (and stay in the
autograd graph), so the library's recorder and methods can be checked against them.
"""

import math

import torch
import torch.nn.functional as F


def layer_norm(x, sd, prefix):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"])


def explicit_attention(x, sd, prefix, heads, mask=None):
    """x: [N, B, D] → (out [N, B, D], probs [B, H, N, N]) with probs = softmax(q kᵀ / √d + mask)."""
    n, b, d = x.shape
    head_dim = d // heads
    qkv = x @ sd[prefix + ".in_proj_weight"].t() + sd[prefix + ".in_proj_bias"]
    q, k, v = qkv.split(d, dim=-1)

    def split_heads(t):  # [N, B, D] → [B, H, N, hd]
        return t.reshape(n, b, heads, head_dim).permute(1, 2, 0, 3)

    q, k, v = split_heads(q), split_heads(k), split_heads(v)
    logits = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(head_dim)
    if mask is not None:
        logits = logits + mask
    probs = logits.softmax(dim=-1)
    out = torch.einsum("bhij,bhjd->bhid", probs, v)  # [B, H, N, hd]
    out = out.permute(2, 0, 1, 3).reshape(n, b, d)
    out = out @ sd[prefix + ".out_proj.weight"].t() + sd[prefix + ".out_proj.bias"]
    return out, probs


def residual_stack(x, sd, prefix, layers, heads, mask=None):
    """Runs the pre-norm blocks; x: [N, B, D]. Returns (x, [probs per block], [input per block])."""
    all_probs, inputs = [], []
    for i in range(layers):
        p = f"{prefix}.resblocks.{i}"
        inputs.append(x)
        attn_out, probs = explicit_attention(layer_norm(x, sd, p + ".ln_1"), sd, p + ".attn", heads, mask)
        all_probs.append(probs)
        x = x + attn_out
        h = layer_norm(x, sd, p + ".ln_2") @ sd[p + ".mlp.c_fc.weight"].t() + sd[p + ".mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)
        x = x + h @ sd[p + ".mlp.c_proj.weight"].t() + sd[p + ".mlp.c_proj.bias"]
    return x, all_probs, inputs


def count_layers(sd, prefix):
    return len({k.split(".")[len(prefix.split(".")) + 1] for k in sd if k.startswith(prefix + ".resblocks.")})


def vit_image(sd, image, tokens_hook=None):
    """Returns (embedding [B, E], probs per block [B, H, N, N], block inputs [N, B, D])."""
    w = sd["visual.conv1.weight"]
    width, patch = w.shape[0], w.shape[-1]
    x = F.conv2d(image, w, stride=patch)  # [B, D, g, g]
    b = x.shape[0]
    x = x.reshape(b, width, -1).permute(2, 0, 1)  # [g*g, B, D]
    cls = sd["visual.class_embedding"].reshape(1, 1, width).expand(1, b, width)
    x = torch.cat([cls, x], 0) + sd["visual.positional_embedding"][:, None, :]
    x = layer_norm(x, sd, "visual.ln_pre")
    if tokens_hook is not None:
        x = tokens_hook(x)
    layers = count_layers(sd, "visual.transformer")
    x, probs, inputs = residual_stack(x, sd, "visual.transformer", layers, width // 64)
    emb = layer_norm(x[0], sd, "visual.ln_post") @ sd["visual.proj"]
    return emb, probs, inputs


def text(sd, ids, pool="argmax", causal=True):
    """Returns (embedding [P, E], probs per block [P, H, L, L]). pool: the token read, "argmax"
    (CLIP's EOT) or "first"; causal=False: every token attends to every token (no mask)."""
    width = sd["ln_final.weight"].shape[0]
    length = ids.shape[1]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"]  # [P, L, D]
    x = x.permute(1, 0, 2)
    mask = torch.triu(torch.full((length, length), float("-inf")), diagonal=1) if causal else None
    x, probs, _ = residual_stack(x, sd, "transformer", count_layers(sd, "transformer"), width // 64, mask)
    x = layer_norm(x, sd, "ln_final").permute(1, 0, 2)
    read = ids.argmax(dim=-1) if pool == "argmax" else torch.zeros(ids.shape[0], dtype=torch.long)
    return x[torch.arange(ids.shape[0]), read] @ sd["text_projection"], probs


def batch_norm(x, sd, prefix):
    return F.batch_norm(x, sd[prefix + ".running_mean"], sd[prefix + ".running_var"],
                        sd[prefix + ".weight"], sd[prefix + ".bias"], training=False, eps=1e-5)


def bottleneck(x, sd, p, stride):
    out = F.relu(batch_norm(F.conv2d(x, sd[p + ".conv1.weight"]), sd, p + ".bn1"))
    out = F.relu(batch_norm(F.conv2d(out, sd[p + ".conv2.weight"], padding=1), sd, p + ".bn2"))
    if stride > 1:
        out = F.avg_pool2d(out, stride)
    out = batch_norm(F.conv2d(out, sd[p + ".conv3.weight"]), sd, p + ".bn3")
    if p + ".downsample.0.weight" in sd:
        identity = F.avg_pool2d(x, stride) if stride > 1 else x
        identity = batch_norm(F.conv2d(identity, sd[p + ".downsample.0.weight"]), sd, p + ".downsample.1")
    else:
        identity = x
    return F.relu(out + identity)


def resnet_features(sd, image):
    """Stem and four stages → last-stage features [B, C, h, w]."""
    x = image
    for i, stride in ((1, 2), (2, 1), (3, 1)):
        x = F.relu(batch_norm(F.conv2d(x, sd[f"visual.conv{i}.weight"], stride=stride, padding=1), sd, f"visual.bn{i}"))
    x = F.avg_pool2d(x, 2)
    for stage in (1, 2, 3, 4):
        blocks = len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{stage}.")})
        for j in range(blocks):
            x = bottleneck(x, sd, f"visual.layer{stage}.{j}", 2 if (j == 0 and stage > 1) else 1)
    return x


def attention_pool(sd, features):
    """Returns (embedding [B, E], probs of the mean-token query [B, H, 1, 1 + h*w])."""
    b, c = features.shape[:2]
    tokens = features.reshape(b, c, -1).permute(2, 0, 1)  # [hw, B, C]
    tokens = torch.cat([tokens.mean(0, keepdim=True), tokens], 0) + sd["visual.attnpool.positional_embedding"][:, None]
    heads = c // 64
    head_dim = c // heads

    def proj(name, t):
        return t @ sd[f"visual.attnpool.{name}.weight"].t() + sd[f"visual.attnpool.{name}.bias"]

    q = proj("q_proj", tokens[:1]).reshape(1, b, heads, head_dim).permute(1, 2, 0, 3)
    k = proj("k_proj", tokens).reshape(-1, b, heads, head_dim).permute(1, 2, 0, 3)
    v = proj("v_proj", tokens).reshape(-1, b, heads, head_dim).permute(1, 2, 0, 3)
    probs = (q @ k.transpose(-1, -2) / math.sqrt(head_dim)).softmax(-1)
    out = (probs @ v).permute(0, 2, 1, 3).reshape(b, c)
    return proj("c_proj", out), probs


def resnet_image(sd, image):
    return attention_pool(sd, resnet_features(sd, image))[0]


def image(sd, pixels):
    """Image embedding [B, E] for a ViT or ResNet state dict."""
    return vit_image(sd, pixels)[0] if "visual.proj" in sd else resnet_image(sd, pixels)


def logits(sd, pixels, ids):
    """logit_scale · cosine: [B, P]."""
    img = F.normalize(image(sd, pixels), dim=-1)
    txt = F.normalize(text(sd, ids)[0], dim=-1)
    return sd["logit_scale"].exp() * img @ txt.t()
