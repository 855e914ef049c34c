import numpy as np


def test_losses_add_their_correct_predictions_to_a_device_counter(fake_gpu):
    """What the trainer accumulates on the GPU: cross-entropy by its fused argmax kernel, binary cross-entropy
    per element (multi-label), each into a 0-d int64 counter, hand-counted here."""
    from dltrain.losses import BinaryCrossEntropy, CrossEntropy

    logits = fake_gpu.asarray(np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 3.0], [1.0, 1.0, 5.0]], np.float32))
    counter = fake_gpu.zeros((), np.int64)
    CrossEntropy().add_correct(logits, fake_gpu.asarray(np.array([0, 2, 2])), counter)  # row 1 ties: argmax is 1
    assert int(counter) == 2
    outputs = fake_gpu.asarray(np.array([[0.5, -1.0], [-0.2, 0.3]], np.float32))
    BinaryCrossEntropy().add_correct(outputs, fake_gpu.asarray(np.array([[1.0, 0.0], [1.0, 1.0]], np.float32)),
                                     counter)
    assert int(counter) == 2 + 3
