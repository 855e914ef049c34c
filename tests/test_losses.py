import numpy as np

from dltrain.losses import accuracy, misclassification_rate


def test_accuracy_and_its_complement_by_hand():
    predictions, targets = np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])
    assert accuracy(predictions, targets) == 0.75
    assert misclassification_rate(predictions, targets) == 0.25
