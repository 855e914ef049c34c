"""Each compiled kernel set against the reference kernels (dltrain/backend/reference.py, plain NumPy), on odd shapes,
strides, padding, dilation, ties and both float dtypes: the CUDA kernels (tests/test_gpu_paths.py) and the compiled
CPU kernels (tests/test_cpu_kernels.py) run the same checks."""

import numpy as np

from dltrain.backend import reference

R = np.random.default_rng(11)


def check_kernels_against_reference(cupy, cuda, dtype):
    """`cuda`: a kernel module (the interface of dltrain/backend/kernels.py); `cupy`: its array module's
    asarray / asnumpy / empty / zeros (numpy-like for the CPU kernels)."""
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}

    def host(*arrays):
        return [cupy.asnumpy(a) for a in arrays]

    table = R.standard_normal(256).astype(dtype)
    codes = R.integers(0, 256, (40, 1, 6, 5), dtype=np.uint8)
    for index in (R.permutation(40)[:17], np.array([3, 3, 0, 39]), np.zeros(0, np.int64), slice(5, 30, 2)):
        got = cuda.lookup_rows(cupy.asarray(table), cupy.asarray(codes),
                               index if isinstance(index, slice) else cupy.asarray(index))
        want = reference.lookup_rows(table, codes, index)
        assert got.dtype == dtype and got.shape == want.shape and np.array_equal(host(got)[0], want)
        assert np.array_equal(want, table[codes[index].astype(np.int64)])
    grad, out = R.standard_normal((2, 300)).astype(dtype)
    np.testing.assert_array_equal(host(cuda.relu_backward(cupy.asarray(grad), cupy.asarray(out)))[0],
                                  reference.relu_backward(grad, out))
    for shape in [(3, 5), (2, 3, 300)]:  # rows of a linear layer's output, with NaN kept by the ReLU
        x, bias = R.standard_normal(shape).astype(dtype), R.standard_normal(shape[-1]).astype(dtype)
        x.reshape(-1)[::7] = np.nan
        for b in (bias, None):
            want, got = x.copy(), cupy.asarray(x)
            reference.add_bias_relu(want, b)
            cuda.add_bias_relu(got, None if b is None else cupy.asarray(b))
            np.testing.assert_array_equal(cupy.asnumpy(got), want)
            np.testing.assert_array_equal(want, np.maximum(x + (0 if b is None else b), 0))
    x, uniform = R.standard_normal((100, 7)).astype(dtype), R.uniform(size=(100, 7)).astype(dtype)
    for got, want in zip(host(*cuda.dropout(cupy.asarray(x), cupy.asarray(uniform), 0.3)),
                         reference.dropout(x, uniform, 0.3)):
        np.testing.assert_allclose(got, want, **tol)
    for rows, classes in [(1, 1), (37, 10), (64, 33), (5, 1000)]:
        logits = (R.standard_normal((rows, classes)) * 5).astype(dtype)
        labels = R.integers(0, classes, rows)
        got = host(*cuda.log_softmax_nll(cupy.asarray(logits), cupy.asarray(labels)))
        for a, b in zip(got, reference.log_softmax_nll(logits, labels)):
            np.testing.assert_allclose(a, b, **tol)
        ties = np.round(logits / 4).astype(dtype)  # many equal maxima: the first one counts, as argmax says
        ties[0, -1] = np.nan  # NaN ranks above everything, as in argmax
        for scores in (logits, ties):
            hits = np.where(np.arange(rows) % 2 == 0, np.argmax(scores, axis=1), labels)  # half the rows right
            want, got = np.zeros((), np.int64), cupy.zeros((), np.int64)
            reference.add_correct(scores, hits, want)
            cuda.add_correct(cupy.asarray(scores), cupy.asarray(hits), got)
            cuda.add_correct(cupy.asarray(scores), cupy.asarray(hits), got)  # it adds
            assert int(want) >= (rows + 1) // 2 and int(got) == 2 * int(want), (rows, classes)
        log_p = reference.log_softmax_nll(logits, labels)[0]
        upstream = np.asarray(0.7, dtype)
        got = cuda.cross_entropy_backward(cupy.asarray(log_p), cupy.asarray(labels), cupy.asarray(upstream))
        np.testing.assert_allclose(cupy.asnumpy(got), reference.cross_entropy_backward(log_p, labels, upstream), **tol)
    for shape, kernel, stride, padding, dilation in [((2, 3, 9, 8), (3, 3), (1, 1), (1, 1), (1, 1)),
                                                     ((3, 2, 11, 10), (3, 2), (2, 3), (1, 0), (2, 1))]:
        oh = (shape[2] + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
        ow = (shape[3] + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
        image = R.standard_normal(shape).astype(dtype)
        want = reference.im2col(image, kernel, stride, padding, dilation, (oh, ow))
        assert want.shape == (shape[1] * kernel[0] * kernel[1], shape[0] * oh * ow)
        got = cuda.im2col(cupy.asarray(image), kernel, stride, padding, dilation, (oh, ow))
        np.testing.assert_array_equal(cupy.asnumpy(got), want)
        columns = R.standard_normal(want.shape).astype(dtype)
        want = np.empty(shape, dtype)
        reference.col2im(columns, want, kernel, stride, padding, dilation, (oh, ow))
        got = cupy.empty(shape, dtype)
        cuda.col2im(cupy.asarray(columns), got, kernel, stride, padding, dilation, (oh, ow))
        np.testing.assert_allclose(cupy.asnumpy(got), want, **tol)
        product = R.standard_normal((4, shape[0] * oh * ow)).astype(dtype)  # 4 filters
        bias = R.standard_normal(4).astype(dtype)
        product[0, :3] = np.nan  # the ReLU keeps NaN, as np.maximum does
        for b, relu in [(bias, False), (None, False), (bias, True), (None, True)]:
            want = np.empty((shape[0], 4, oh, ow), dtype)
            reference.filters_to_images(product, b, want, relu)
            got = cupy.empty(want.shape, dtype)
            cuda.filters_to_images(cupy.asarray(product), None if b is None else cupy.asarray(b), got, relu)
            np.testing.assert_array_equal(cupy.asnumpy(got), want)
            plain = product.reshape(4, shape[0], oh, ow).transpose(1, 0, 2, 3) + (0 if b is None else b[:, None, None])
            np.testing.assert_array_equal(want, np.maximum(plain, 0) if relu else plain)
        grad = R.standard_normal((shape[0], 4, oh, ow)).astype(dtype)
        np.testing.assert_array_equal(cupy.asnumpy(cuda.images_to_filters(cupy.asarray(grad))),
                                      reference.images_to_filters(grad))
    images = np.round(R.standard_normal((2, 3, 9, 8)), 1).astype(dtype)  # with ties
    for kernel, stride, padding in [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 2), (1, 3), (1, 1))]:
        oh = (9 + 2 * padding[0] - kernel[0]) // stride[0] + 1
        ow = (8 + 2 * padding[1] - kernel[1]) // stride[1] + 1
        want_out, want_winner = reference.max_pool_forward(images, kernel, stride, padding, (oh, ow))
        out, winner = cuda.max_pool_forward(cupy.asarray(images), kernel, stride, padding, (oh, ow))
        np.testing.assert_array_equal(cupy.asnumpy(out), want_out)
        np.testing.assert_array_equal(cupy.asnumpy(winner), want_winner)
        upstream = R.standard_normal(want_out.shape).astype(dtype)
        want = reference.max_pool_backward(upstream, want_winner, images.shape, kernel, stride, padding, (oh, ow))
        got = cuda.max_pool_backward(cupy.asarray(upstream), winner, images.shape, kernel, stride, padding, (oh, ow))
        np.testing.assert_allclose(cupy.asnumpy(got), want, **tol)
    for kernel, stride, padding in [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 2), (1, 3), (1, 1))]:
        out_hw = ((9 + 2 * padding[0] - kernel[0]) // stride[0] + 1, (8 + 2 * padding[1] - kernel[1]) // stride[1] + 1)
        upstream = R.standard_normal((2, 3) + out_hw).astype(dtype)
        for include_pad in (True, False):
            np.testing.assert_allclose(
                cupy.asnumpy(cuda.avg_pool_forward(cupy.asarray(images), kernel, stride, padding, out_hw, include_pad)),
                reference.avg_pool_forward(images, kernel, stride, padding, out_hw, include_pad), **tol)
            np.testing.assert_allclose(
                cupy.asnumpy(cuda.avg_pool_backward(cupy.asarray(upstream), images.shape, kernel, stride, padding,
                                                    out_hw, include_pad)),
                reference.avg_pool_backward(upstream, images.shape, kernel, stride, padding, out_hw, include_pad),
                **tol)
    x = np.concatenate([R.standard_normal(500) * 3, [0.0, -0.0, 1e-30, -12.0, 12.0, 40.0, -40.0]]).astype(dtype)
    g = R.standard_normal(x.shape).astype(dtype)
    np.testing.assert_allclose(cupy.asnumpy(cuda.gelu_forward(cupy.asarray(x))), reference.gelu_forward(x), **tol)
    np.testing.assert_allclose(cupy.asnumpy(cuda.gelu_backward(cupy.asarray(g), cupy.asarray(x))),
                               reference.gelu_backward(g, x), **tol)
    check_recurrent_steps(cupy, cuda, dtype, tol)
    check_layer_norm(cupy, cuda, dtype)
    # per-channel sums of a few hundred float32 terms of size ~1 differ in summation order: ~1e-5 absolute
    sums_tol = {"rtol": 1e-5, "atol": 1e-4} if dtype == np.float32 else tol
    for shape in [(6, 3, 5, 4), (300, 5), (2, 2, 3, 3, 3)]:  # images, (N, C) features, volumes
        x = (R.standard_normal(shape) * 2 + 1).astype(dtype)
        g = R.standard_normal(shape).astype(dtype)
        c = shape[1]
        gamma, beta = R.standard_normal(c).astype(dtype), R.standard_normal(c).astype(dtype)
        for affine, running in [((gamma, beta), True), ((None, None), False)]:
            stats = [R.standard_normal(c).astype(dtype), R.uniform(0.5, 2, c).astype(dtype)] if running else [None] * 2
            on_gpu = [None if a is None else cupy.asarray(a) for a in stats]
            want = reference.batch_norm_statistics(x, *affine, *stats, 1e-5, 0.1)
            got = cuda.batch_norm_statistics(cupy.asarray(x), *[None if a is None else cupy.asarray(a) for a in affine],
                                             *on_gpu, 1e-5, 0.1)
            for a, b in zip(got + tuple(on_gpu), want + tuple(stats)):
                if b is not None:
                    np.testing.assert_allclose(cupy.asnumpy(a), b, **sums_tol, err_msg=f"statistics {shape}")
            mean, inv_std, scale, shift = want
            for relu in (False, True):
                np.testing.assert_allclose(cupy.asnumpy(cuda.batch_norm_apply(cupy.asarray(x), *map(cupy.asarray, (
                    scale, shift)), relu)), reference.batch_norm_apply(x, scale, shift, relu), **tol)
            for training in (True, False):
                want = reference.batch_norm_backward_statistics(g, x, mean, scale, inv_std, training)
                got = cuda.batch_norm_backward_statistics(*map(cupy.asarray, (g, x, mean, scale, inv_std)), training)
                for a, b in zip(got, want):
                    np.testing.assert_allclose(cupy.asnumpy(a), b, **sums_tol, err_msg=f"backward statistics {shape}")
                np.testing.assert_allclose(
                    cupy.asnumpy(cuda.batch_norm_backward(*map(cupy.asarray, (g, x, mean, scale) + want[2:]))),
                    reference.batch_norm_backward(g, x, mean, scale, *want[2:]), **tol)
        var = R.uniform(0.5, 2, c).astype(dtype)
        for affine in [(gamma, beta), (None, None)]:
            want = reference.batch_norm_eval_scale(gamma, var, *affine, 1e-5)
            got = cuda.batch_norm_eval_scale(cupy.asarray(gamma), cupy.asarray(var),
                                             *[None if a is None else cupy.asarray(a) for a in affine], 1e-5)
            for a, b in zip(got, want):
                np.testing.assert_allclose(cupy.asnumpy(a), b, **tol)
    size = 1000
    for momentum, nesterov in [(0.0, False), (0.9, False), (0.9, True)]:
        param, g, velocity = (R.standard_normal(size).astype(dtype) for _ in range(3))
        decay = np.where(np.arange(size) < 600, 0.01, 0.0).astype(dtype)
        want = [param.copy(), None if not momentum else velocity.copy()]
        reference.sgd_step(want[0], g, want[1], decay, 0.1, momentum, nesterov)
        got = [cupy.asarray(param), None if not momentum else cupy.asarray(velocity)]
        cuda.sgd_step(got[0], cupy.asarray(g), got[1], cupy.asarray(decay), 0.1, momentum, nesterov)
        for a, b in zip(got, want):
            if b is not None:
                np.testing.assert_allclose(cupy.asnumpy(a), b, **tol)
    for decoupled in (False, True):
        param, g, m = (R.standard_normal(size).astype(dtype) for _ in range(3))
        v = R.uniform(size=size).astype(dtype)
        want = [param.copy(), m.copy(), v.copy()]
        reference.adam_step(*want[:1], g, *want[1:], 0.01, 0.001, 0.9, 0.999, 1e-8, 7, decoupled)
        got = [cupy.asarray(a) for a in (param, m, v)]
        cuda.adam_step(got[0], cupy.asarray(g), got[1], got[2], 0.01, 0.001, 0.9, 0.999, 1e-8, 7, decoupled)
        for a, b in zip(got, want):
            np.testing.assert_allclose(cupy.asnumpy(a), b, **tol)


def check_recurrent_steps(cupy, cuda, dtype, tol):
    """The GRU and LSTM steps against the reference, time slices included."""
    projected = R.standard_normal((4, 6, 3 * 5)).astype(dtype)  # (batch, time, 3H): a time slice is strided
    h, bias = R.standard_normal((4, 5)).astype(dtype), R.standard_normal(15).astype(dtype)
    for b in (bias, None):
        want = [R.standard_normal((4, 15)).astype(dtype)] + [np.empty(s, dtype) for s in ((4, 5), (4, 10), (4, 5))]
        got = [cupy.asarray(want[0])] + [cupy.empty(a.shape, dtype) for a in want[1:]]
        reference.gru_forward(projected[:, 2], want[0], b, h, *want[1:])
        cuda.gru_forward(cupy.asarray(projected)[:, 2], got[0], None if b is None else cupy.asarray(b),
                         cupy.asarray(h), *got[1:])
        for a, w in zip(got, want):
            np.testing.assert_allclose(cupy.asnumpy(a), w, **tol)
    gh, h_new, rz, n = want
    grad = R.standard_normal((4, 6, 5)).astype(dtype)  # the outputs' gradient, sliced in time too
    carried, direct = R.standard_normal((4, 5)).astype(dtype), R.standard_normal((4, 5)).astype(dtype)
    for has_next in (True, False):
        want = [direct.copy(), np.empty((4, 6, 15), dtype), np.empty((4, 15), dtype)]
        got = [cupy.asarray(direct), cupy.empty((4, 6, 15), dtype), cupy.empty((4, 15), dtype)]
        reference.gru_backward(grad[:, 3], carried, want[0], has_next, h, rz, n, gh, want[1][:, 3], want[2])
        cuda.gru_backward(cupy.asarray(grad)[:, 3], cupy.asarray(carried), got[0], has_next,
                          *map(cupy.asarray, (h, rz, n, gh)), got[1][:, 3], got[2])
        for a, w in zip(got, want):
            np.testing.assert_allclose(cupy.asnumpy(a)[..., 3, :] if a.ndim == 3 else cupy.asnumpy(a),
                                       w[..., 3, :] if w.ndim == 3 else w, **tol)
    projected = R.standard_normal((4, 6, 20)).astype(dtype)  # the LSTM's: 4 gates of 5 units
    c_prev, bias = R.standard_normal((4, 5)).astype(dtype), R.standard_normal(20).astype(dtype)
    for b in (bias, None):
        want = [R.standard_normal((4, 20)).astype(dtype), np.empty((4, 5), dtype), np.empty((4, 5), dtype)]
        got = [cupy.asarray(want[0]), cupy.empty((4, 5), dtype), cupy.empty((4, 5), dtype)]
        reference.lstm_forward(projected[:, 1], want[0], b, c_prev, *want[1:])
        cuda.lstm_forward(cupy.asarray(projected)[:, 1], got[0], None if b is None else cupy.asarray(b),
                          cupy.asarray(c_prev), *got[1:])
        for a, w in zip(got, want):
            np.testing.assert_allclose(cupy.asnumpy(a), w, **tol)
    acts, c_new = want[0], want[2]
    grad = R.standard_normal((2, 4, 6, 5)).astype(dtype)  # the gradients of every h_t and c_t
    carried, dc_next = R.standard_normal((4, 5)).astype(dtype), R.standard_normal((4, 5)).astype(dtype)
    for has_next in (True, False):
        want = [dc_next.copy(), np.empty((4, 6, 20), dtype), np.empty((4, 20), dtype)]
        got = [cupy.asarray(dc_next), cupy.empty((4, 6, 20), dtype), cupy.empty((4, 20), dtype)]
        reference.lstm_backward(grad[0][:, 2], grad[1][:, 2], carried, want[0], has_next, acts, c_prev, c_new,
                           want[1][:, 2], want[2])
        on_gpu = cupy.asarray(grad)
        cuda.lstm_backward(on_gpu[0][:, 2], on_gpu[1][:, 2], cupy.asarray(carried), got[0], has_next,
                           *map(cupy.asarray, (acts, c_prev, c_new)), got[1][:, 2], got[2])
        for a, w in zip(got, want):
            np.testing.assert_allclose(cupy.asnumpy(a)[:, 2] if a.ndim == 3 else cupy.asnumpy(a),
                                       w[:, 2] if w.ndim == 3 else w, **tol)
        # d_in may be d_gates itself (the time-major sequence passes one (N, 4H) step of its gradients as both)
        got = [cupy.asarray(dc_next), cupy.empty((4, 20), dtype)]
        cuda.lstm_backward(on_gpu[0][:, 2], on_gpu[1][:, 2], cupy.asarray(carried), got[0], has_next,
                           *map(cupy.asarray, (acts, c_prev, c_new)), got[1], got[1])
        np.testing.assert_allclose(cupy.asnumpy(got[0]), want[0], **tol)
        np.testing.assert_allclose(cupy.asnumpy(got[1]), want[2], **tol)


def check_layer_norm(cupy, kernels, dtype):
    """layer_norm_forward / layer_norm_backward against the reference: odd widths (1, 3, 257, 1000) and row counts
    (none at all included), with and without gamma and beta, a strided view as x; the inputs come back unchanged."""
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    # sums over a thousand float32 values, and the row sums of the scale's and shift's gradients, differ in order
    sums_tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else tol
    rng = np.random.default_rng(32)  # its own: the other checks' data stay what they were

    def device(a):
        return None if a is None else cupy.asarray(a)

    for rows, width, strided in [(1, 1, False), (7, 3, False), (5, 257, True), (3, 1000, False), (33, 64, False),
                                 (0, 5, False)]:
        wide = (rng.standard_normal((rows, 2 * width)) * 3 + 2).astype(dtype)
        x = wide[:, ::2] if strided else np.ascontiguousarray(wide[:, :width])
        on_device = cupy.asarray(wide)[:, ::2] if strided else cupy.asarray(x)
        g = rng.standard_normal((rows, width)).astype(dtype)
        gamma, beta = rng.standard_normal(width).astype(dtype), rng.standard_normal(width).astype(dtype)
        inputs = [device(a) for a in (g, gamma, beta)]
        for affine in [(gamma, beta), (gamma, None), (None, None)]:
            label = f"rows {rows}, width {width}, affine {[a is not None for a in affine]}"
            want = reference.layer_norm_forward(x, *affine, 1e-5)
            got = kernels.layer_norm_forward(on_device, *(None if a is None else b for a, b in zip(affine, inputs[1:])),
                                             1e-5)
            for a, b, name in zip(got, want, ("out", "mean", "inv_std")):
                assert a.dtype == dtype and a.shape == b.shape, (label, name)
                np.testing.assert_allclose(cupy.asnumpy(a), b, **sums_tol, err_msg=f"{label}: {name}")
            mean, inv_std = want[1:]
            for needed in (True, False):
                want_back = reference.layer_norm_backward(g, x, mean, inv_std, affine[0], needed)
                got_back = kernels.layer_norm_backward(inputs[0], on_device, device(mean), device(inv_std),
                                                       None if affine[0] is None else inputs[1], needed)
                for a, b, name in zip(got_back, want_back, ("grad_x", "grad_gamma", "grad_beta")):
                    if b is None:
                        assert a is None, (label, name)
                        continue
                    assert a.dtype == dtype and a.shape == b.shape, (label, name)
                    np.testing.assert_allclose(cupy.asnumpy(a), b, **sums_tol, err_msg=f"{label}: {name}")
        for now, then in zip([on_device, *inputs], [x, g, gamma, beta]):
            np.testing.assert_array_equal(cupy.asnumpy(now), then)
