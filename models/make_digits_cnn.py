"""Train the bundled sample model, models/digits_cnn.onnx, and write its sample images.

    python models/make_digits_cnn.py        # needs `pip install -e .[models]` (scikit-learn)

A small CNN for scikit-learn's bundled digits data set (sklearn.datasets.load_digits: 1797 8x8
grayscale images of handwritten digits, values 0..16; no download). Everything is plain numpy:
forward and backward passes written by hand (convolutions through im2col), Adam, a seeded
np.random.default_rng, a fixed number of epochs. Running the script twice writes byte-identical files.

Input   "input"  [1,1,16,16] float32 in [0,1]: the 8x8 digit upscaled 2x (nearest neighbour), scaled
                 to 8 bits (u8 = round(pixel * 255 / 16)) and divided by 255 -- exactly what decoding
                 the saved 16x16 grayscale PNG and dividing by 255 gives.
Output  "logits" [1,10] float32: raw class scores (no Softmax); the prediction is the argmax.

    conv1  Conv 3x3, 1->8, stride 1, pad 1   [1,8,16,16]   + relu1
    pool1  MaxPool 2x2, stride 2             [1,8,8,8]
    conv2  Conv 3x3, 8->16, stride 1, pad 1  [1,16,8,8]    + relu2
    pool2  MaxPool 2x2, stride 2             [1,16,4,4]
    conv3  Conv 3x3, 16->16, stride 1, pad 1 [1,16,4,4]    + relu3
    gap    GlobalAveragePool                 [1,16,1,1]
    flatten Flatten(axis=1)                  [1,16]
    fc     Gemm (transB=1), 16->10           [1,10]

Training: 20 epochs of Adam (lr 1e-2, cosine decay to 0), batch 32, softmax cross-entropy, He-normal
init, float32. Split: sklearn.model_selection.train_test_split(test_size=297, stratify=labels,
random_state=0), i.e. 1500 train / 297 test images. (A sequential split -- first 1500 / last 297 --
was not used: its test part is harder than the set as a whole; an RBF SVM gets ~93% on it, this CNN
about the same, against ~98% on the stratified split.)

Outputs: models/digits_cnn.onnx (opset 13, IR version 8) and models/digits/digit<label>_<index>.png,
20 test images (the first two of each class in data-set order), <index> being the image's index in
load_digits(). The script checks with onnxruntime that the ONNX model gives the numpy forward pass's
predictions on the whole test split, and exits 1 if not.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE / "digits_cnn.onnx"
DIGITS_DIR = HERE / "digits"

SEED = 0
EPOCHS = 20
BATCH = 32
LR = 1e-2               # Adam, cosine-decayed to 0 over the run
N_TEST = 297            # stratified random test split (sklearn train_test_split, random_state=SEED)
SAMPLES_PER_CLASS = 2   # test images saved per digit -> 20 PNGs
PRODUCER = "kpuc models/make_digits_cnn.py"

# (name, shape) of every parameter, in the order the ONNX initializers are written.
PARAM_SHAPES = {
    "conv1.weight": (8, 1, 3, 3), "conv1.bias": (8,),
    "conv2.weight": (16, 8, 3, 3), "conv2.bias": (16,),
    "conv3.weight": (16, 16, 3, 3), "conv3.bias": (16,),
    "fc.weight": (10, 16), "fc.bias": (10,),
}


# ---------------------------------------------------------------------------------------------- data

def to_uint8(images8: np.ndarray) -> np.ndarray:
    """(N,8,8) digits with values 0..16 -> (N,16,16) uint8: 2x nearest-neighbour upscale, 0..255."""
    up = np.repeat(np.repeat(np.asarray(images8, dtype=np.float64), 2, axis=1), 2, axis=2)
    return np.round(up * (255.0 / 16.0)).astype(np.uint8)


def to_input(u8: np.ndarray) -> np.ndarray:
    """(N,16,16) uint8 -> (N,1,16,16) float32 in [0,1], the model input (same as PNG value / 255)."""
    return (u8.astype(np.float32) / np.float32(255.0))[:, None]


def load_data():
    """(x_train, y_train, x_test, y_test, u8_all, y_all, test_idx) from scikit-learn's bundled digits.

    The split is sklearn's train_test_split(test_size=297, stratify=labels, random_state=0); both parts
    are kept in data-set order. test_idx are the test images' indices in load_digits().
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    u8 = to_uint8(digits.images)
    x = to_input(u8)
    y = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=N_TEST, stratify=y, random_state=SEED)
    train_idx.sort()
    test_idx.sort()
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx], u8, y, test_idx


# ---------------------------------------------------------------------------------------------- layers

def im2col(x: np.ndarray) -> np.ndarray:
    """(N,C,H,W) -> (N, C*9, H*W): the 3x3 patches of a stride-1, pad-1 convolution, (c, ky, kx) order."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.empty((n, c, 3, 3, h, w), dtype=x.dtype)
    for ky in range(3):
        for kx in range(3):
            cols[:, :, ky, kx] = xp[:, :, ky:ky + h, kx:kx + w]
    return cols.reshape(n, c * 9, h * w)


def col2im(dcols: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Adjoint of im2col: (N, C*9, H*W) -> (N,C,H,W), overlapping patches summed."""
    n, c, h, w = shape
    dcols = dcols.reshape(n, c, 3, 3, h, w)
    dxp = np.zeros((n, c, h + 2, w + 2), dtype=dcols.dtype)
    for ky in range(3):
        for kx in range(3):
            dxp[:, :, ky:ky + h, kx:kx + w] += dcols[:, :, ky, kx]
    return dxp[:, :, 1:-1, 1:-1]


def conv_forward(x, weight, bias):
    n, _, h, w = x.shape
    f = weight.shape[0]
    cols = im2col(x)
    out = np.matmul(weight.reshape(f, -1), cols) + bias[:, None]
    return out.reshape(n, f, h, w), cols


def conv_backward(dout, cols, weight, x_shape):
    n, f, h, w = dout.shape
    k = cols.shape[1]
    d = dout.reshape(n, f, h * w)
    dweight = (d.transpose(1, 0, 2).reshape(f, n * h * w) @ cols.transpose(1, 0, 2).reshape(k, n * h * w).T)
    dbias = d.sum(axis=(0, 2))
    dx = col2im(np.matmul(weight.reshape(f, k).T, d), x_shape)
    return dx, dweight.reshape(weight.shape), dbias


def pool_forward(x):
    """2x2 max pooling, stride 2; also returns the argmax of every window (first max wins)."""
    n, c, h, w = x.shape
    win = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    idx = win.argmax(axis=-1)
    return np.take_along_axis(win, idx[..., None], axis=-1)[..., 0], idx


def pool_backward(dout, idx):
    n, c, h2, w2 = dout.shape
    dwin = np.zeros((n, c, h2, w2, 4), dtype=dout.dtype)
    np.put_along_axis(dwin, idx[..., None], dout[..., None], axis=-1)
    return dwin.reshape(n, c, h2, w2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h2 * 2, w2 * 2)


def forward(params, x, keep=False):
    """Logits (N,10) for a batch (N,1,16,16); with keep=True also the cache for backward()."""
    c1, cols1 = conv_forward(x, params["conv1.weight"], params["conv1.bias"])
    r1 = np.maximum(c1, 0)
    p1, i1 = pool_forward(r1)
    c2, cols2 = conv_forward(p1, params["conv2.weight"], params["conv2.bias"])
    r2 = np.maximum(c2, 0)
    p2, i2 = pool_forward(r2)
    c3, cols3 = conv_forward(p2, params["conv3.weight"], params["conv3.bias"])
    r3 = np.maximum(c3, 0)
    gap = r3.mean(axis=(2, 3))
    logits = gap @ params["fc.weight"].T + params["fc.bias"]
    if not keep:
        return logits
    return logits, (x.shape, c1, cols1, i1, p1.shape, c2, cols2, i2, p2.shape, c3, cols3, gap)


def backward(params, cache, dlogits):
    """Gradients of every parameter given d(loss)/d(logits)."""
    x_shape, c1, cols1, i1, p1_shape, c2, cols2, i2, p2_shape, c3, cols3, gap = cache
    g = {}
    g["fc.weight"] = dlogits.T @ gap
    g["fc.bias"] = dlogits.sum(axis=0)
    dgap = dlogits @ params["fc.weight"]
    h, w = c3.shape[2:]
    dr3 = np.broadcast_to((dgap / np.float32(h * w))[:, :, None, None], c3.shape)
    dc3 = dr3 * (c3 > 0)
    dp2, g["conv3.weight"], g["conv3.bias"] = conv_backward(dc3, cols3, params["conv3.weight"], p2_shape)
    dc2 = pool_backward(dp2, i2) * (c2 > 0)
    dp1, g["conv2.weight"], g["conv2.bias"] = conv_backward(dc2, cols2, params["conv2.weight"], p1_shape)
    dc1 = pool_backward(dp1, i1) * (c1 > 0)
    _, g["conv1.weight"], g["conv1.bias"] = conv_backward(dc1, cols1, params["conv1.weight"], x_shape)
    return g


def softmax_cross_entropy(logits, y):
    """Mean cross-entropy loss and its gradient w.r.t. the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    n = logits.shape[0]
    loss = float(-np.log(p[np.arange(n), y] + 1e-12).mean())
    dlogits = p
    dlogits[np.arange(n), y] -= 1
    return loss, (dlogits / np.float32(n)).astype(np.float32)


def predict(params, x, batch=256):
    return np.concatenate([forward(params, x[i:i + batch]) for i in range(0, len(x), batch)])


# ---------------------------------------------------------------------------------------------- training

def init_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """He-normal weights, zero biases, float32."""
    params = {}
    for name, shape in PARAM_SHAPES.items():
        if name.endswith(".bias"):
            params[name] = np.zeros(shape, dtype=np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            params[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return params


def train(seed: int = SEED, epochs: int = EPOCHS, data=None, verbose: bool = False) -> dict[str, np.ndarray]:
    """Train from scratch and return the parameters (float32 arrays, ONNX layouts, see PARAM_SHAPES)."""
    x_train, y_train, x_test, y_test = (data or load_data())[:4]
    rng = np.random.default_rng(seed)
    params = init_params(rng)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    step = 0
    total_steps = epochs * -(-len(x_train) // BATCH)
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        total = 0.0
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            logits, cache = forward(params, x_train[idx], keep=True)
            loss, dlogits = softmax_cross_entropy(logits, y_train[idx])
            total += loss * len(idx)
            grads = backward(params, cache, dlogits)
            step += 1
            lr_t = LR * 0.5 * (1 + np.cos(np.pi * (step - 1) / total_steps))  # cosine decay to 0
            lr_t *= np.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
            for k in params:
                m[k] = (beta1 * m[k] + (1 - beta1) * grads[k]).astype(np.float32)
                v[k] = (beta2 * v[k] + (1 - beta2) * grads[k] * grads[k]).astype(np.float32)
                params[k] = (params[k] - lr_t * m[k] / (np.sqrt(v[k]) + eps)).astype(np.float32)
        if verbose:
            acc = float((predict(params, x_test).argmax(1) == y_test).mean())
            print(f"epoch {epoch + 1:2d}/{epochs}  loss {total / len(order):.4f}  test acc {acc:.4f}", flush=True)
    return params


# ---------------------------------------------------------------------------------------------- export

def to_onnx(params: dict[str, np.ndarray]):
    """The ONNX model (opset 13, IR version 8) computing forward() for a single [1,1,16,16] input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def conv(name, x, out):
        return helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [out], name=name,
                                kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1)

    def pool(name, x, out):
        return helper.make_node("MaxPool", [x], [out], name=name, kernel_shape=[2, 2], strides=[2, 2])

    nodes = [
        conv("conv1", "input", "conv1_out"),
        helper.make_node("Relu", ["conv1_out"], ["relu1_out"], name="relu1"),
        pool("pool1", "relu1_out", "pool1_out"),
        conv("conv2", "pool1_out", "conv2_out"),
        helper.make_node("Relu", ["conv2_out"], ["relu2_out"], name="relu2"),
        pool("pool2", "relu2_out", "pool2_out"),
        conv("conv3", "pool2_out", "conv3_out"),
        helper.make_node("Relu", ["conv3_out"], ["relu3_out"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["relu3_out"], ["gap_out"], name="gap"),
        helper.make_node("Flatten", ["gap_out"], ["flatten_out"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flatten_out", "fc.weight", "fc.bias"], ["logits"], name="fc",
                         alpha=1.0, beta=1.0, transA=0, transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 16, 16])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(params[k], dtype=np.float32), name=k)
                     for k in PARAM_SHAPES],
        doc_string="Handwritten digit classifier (scikit-learn digits, 8x8 upscaled to 16x16). "
                   "Input: [1,1,16,16] grayscale in [0,1]. Output: logits [1,10], argmax = digit.",
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name=PRODUCER,
                              producer_version="1", ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def load_onnx_params(path: Path = ONNX_PATH) -> dict[str, np.ndarray]:
    """The initializers of a saved model, by name."""
    import onnx
    from onnx import numpy_helper
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def onnx_logits(model_path: Path, x: np.ndarray) -> np.ndarray:
    """Run the ONNX model with onnxruntime on every [1,16,16] sample of x (N,1,16,16) -> (N,10)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["logits"], {"input": x[i:i + 1]})[0] for i in range(len(x))])


def save_samples(u8: np.ndarray, y: np.ndarray, test_idx: np.ndarray, out_dir: Path = DIGITS_DIR) -> list[Path]:
    """The first SAMPLES_PER_CLASS test images of each digit as 16x16 8-bit grayscale PNGs."""
    from PIL import Image
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("digit*_*.png"):
        old.unlink()
    written = []
    for label in range(10):
        picked = [int(i) for i in test_idx if y[i] == label][:SAMPLES_PER_CLASS]
        for i in picked:
            path = out_dir / f"digit{label}_{i}.png"
            Image.fromarray(u8[i]).save(path, format="PNG", optimize=False)
            written.append(path)
    return written


def main() -> int:
    t0 = time.perf_counter()
    data = load_data()
    x_train, y_train, x_test, y_test, u8, y, test_idx = data
    params = train(data=data, verbose=True)
    t_train = time.perf_counter() - t0

    np_logits = predict(params, x_test)
    np_acc = float((np_logits.argmax(1) == y_test).mean())
    train_acc = float((predict(params, x_train).argmax(1) == y_train).mean())

    model = to_onnx(params)
    ONNX_PATH.write_bytes(model.SerializeToString(deterministic=True))
    samples = save_samples(u8, y, test_idx)

    # Check the exported model against the numpy forward pass, with onnxruntime.
    ort_logits = onnx_logits(ONNX_PATH, x_test)
    ort_acc = float((ort_logits.argmax(1) == y_test).mean())
    max_diff = float(np.abs(ort_logits - np_logits).max())
    same_pred = bool((ort_logits.argmax(1) == np_logits.argmax(1)).all())

    from PIL import Image
    png_pixels = []
    for p in samples:
        with Image.open(p) as img:
            png_pixels.append(np.asarray(img, dtype=np.float32))
    png_x = (np.stack(png_pixels) / 255.0)[:, None]
    png_y = np.array([int(p.stem.split("_")[0][len("digit"):]) for p in samples])
    png_acc = float((onnx_logits(ONNX_PATH, png_x).argmax(1) == png_y).mean())
    png_exact = all(np.array_equal(png_x[k], to_input(u8[[int(p.stem.split("_")[1])]])[0])
                    for k, p in enumerate(samples))

    print(f"train accuracy        {train_acc:.4f} ({len(y_train)} images)")
    print(f"test accuracy (numpy) {np_acc:.4f} ({len(y_test)} images)")
    print(f"test accuracy (ORT)   {ort_acc:.4f}  max |logit diff| {max_diff:.2e}  same predictions: {same_pred}")
    print(f"sample PNGs           {len(samples)} in {DIGITS_DIR.relative_to(HERE.parent)}, accuracy {png_acc:.4f}, "
          f"identical to model input: {png_exact}")
    print(f"wrote {ONNX_PATH.relative_to(HERE.parent)} ({ONNX_PATH.stat().st_size} bytes); "
          f"training {t_train:.1f} s, total {time.perf_counter() - t0:.1f} s")
    if not (same_pred and ort_acc == np_acc and max_diff < 1e-3 and png_exact):
        print("error: the ONNX model does not match the numpy forward pass", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
