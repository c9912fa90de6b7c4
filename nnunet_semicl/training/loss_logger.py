"""nnU-Net's local logger with our per-term training losses added to ``progress.png``."""
from typing import Sequence

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

TERM_PREFIX = "train_loss_"


class SemiCLLocalLogger(LocalLogger):
    """Logs one value per epoch for every loss term (``train_loss_<term>``) and plots them.

    ``progress.png`` keeps nnU-Net's three panels (losses and pseudo Dice, epoch duration, learning
    rate) and gains a fourth with each loss term of our trainers.
    """

    def __init__(self, terms: Sequence[str], verbose: bool = False):
        super().__init__(verbose)
        self.terms = list(terms)
        for t in self.terms:
            self.my_fantastic_logging[TERM_PREFIX + t] = []

    def load_checkpoint(self, checkpoint: dict):
        # a checkpoint written by another trainer (e.g. -pretrained_weights or an older version) may lack
        # some of our keys: pad them with NaN so that every list keeps one entry per epoch
        n = len(checkpoint.get("train_losses", []))
        for t in self.terms:
            checkpoint.setdefault(TERM_PREFIX + t, [float("nan")] * n)
        super().load_checkpoint(checkpoint)

    def plot_progress_png(self, output_folder):
        log = self.my_fantastic_logging
        epoch = min(len(v) for v in log.values()) - 1
        if epoch < 0:
            return
        x = np.arange(epoch + 1)
        fig, axes = plt.subplots(4, 1, figsize=(30, 72))
        ax = axes[0]
        ax.plot(x, log["train_losses"][:epoch + 1], color="b", label="loss_tr", linewidth=4)
        ax.plot(x, log["val_losses"][:epoch + 1], color="r", label="loss_val", linewidth=4)
        ax2 = ax.twinx()
        ax2.plot(x, log["mean_fg_dice"][:epoch + 1], color="g", ls="dotted", label="pseudo dice", linewidth=3)
        ax2.plot(x, log["ema_fg_dice"][:epoch + 1], color="g", label="pseudo dice (mov. avg.)", linewidth=4)
        ax.set_xlabel("epoch"), ax.set_ylabel("loss"), ax2.set_ylabel("pseudo dice")
        ax.legend(loc=(0, 1)), ax2.legend(loc=(0.2, 1))

        ax = axes[1]
        durations = np.array(log["epoch_end_timestamps"][:epoch + 1]) - np.array(log["epoch_start_timestamps"][:epoch + 1])
        ax.plot(x, durations, color="b", label="epoch duration", linewidth=4)
        ax.set_ylim(bottom=0), ax.set_xlabel("epoch"), ax.set_ylabel("time [s]"), ax.legend(loc=(0, 1))

        ax = axes[2]
        ax.plot(x, log["lrs"][:epoch + 1], color="b", label="learning rate", linewidth=4)
        ax.set_xlabel("epoch"), ax.set_ylabel("learning rate"), ax.legend(loc=(0, 1))

        ax = axes[3]
        for t in self.terms:
            ax.plot(x, log[TERM_PREFIX + t][:epoch + 1], label=t, linewidth=4)
        ax.set_xlabel("epoch"), ax.set_ylabel("weighted loss term"), ax.legend(loc=(0, 1), ncol=4)
        ax.set_title("semi-supervised loss terms (as added to the training loss)")

        plt.tight_layout()
        fig.savefig(f"{output_folder}/progress.png")
        plt.close(fig)
