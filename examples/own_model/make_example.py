"""Recreate this example's files: train.npz / test.npz (scikit-learn digits) and the trained
weights of my_models.DigitNet as safetensors. Run from this folder:

    python make_example.py
"""

import numpy as np
import torch
from my_models import build
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def main() -> None:
    digits = load_digits()
    x = (digits.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0,
                                                        stratify=y)
    np.savez_compressed("train.npz", x=x_train, y=y_train)
    np.savez_compressed("test.npz", x=x_test, y=y_test)
    torch.manual_seed(0)
    model = build(num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    inputs, labels = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(30):
        order = torch.randperm(len(inputs))
        for start in range(0, len(order), 64):
            batch = order[start:start + 64]
            loss = torch.nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    print(f"test accuracy {accuracy:.3f}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, "weights.safetensors")


if __name__ == "__main__":
    main()
