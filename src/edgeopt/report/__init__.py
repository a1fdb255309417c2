"""The run report: one self-contained HTML page rendered from recorded statistics.

Data flows one way: ``metrics.json`` (or the runner's dict) -> :mod:`.load` (normalize, note what
is missing) -> :mod:`.extract` (figure specs: plain JSON data) -> :mod:`.figures` (one spec -> one
inline SVG) -> :mod:`.html` (page). Nothing is re-computed from a model and nothing is printed.

Files written beside each other (``write_report`` / ``rebuild_report``), each atomically:

- ``report.html``: no network at view time (inline SVG and CSS, no scripts; a Content-Security-
  Policy forbids fetching anything), readable on a laptop and a phone.
- ``figures.json``: the machine-readable twin, ``{"format": "edgeopt-report-figures",
  "version": 1, "problems": [...], "figures": [{"id", "section", "kind", "title", "caption",
  "callouts", "data"}]}``. Every figure in the page has ``id="fig-<id>"`` and its data here.
  ``kind`` is one of ``tradeoff``, ``heatmap``, ``curves``, ``hist_grid``, ``mask_grid``,
  ``layer_bars`` (see :mod:`.figures` for each kind's ``data`` fields).

Statistics each technique records
---------------------------------
Each technique's handler returns ``Applied(model, {key: stats})``, stats a dataclass with
``to_dict()``; the runner stores it as ``stage["technique_stats"][key]`` (keys: ``quant``, ``prune``, ``distill``,
``lowrank``, ``cluster``; unknown keys render too). Every field is optional: a section or plot
appears only when its fields are present and well-formed, malformed entries are skipped with a
note. Fields are read by meaning, not by technique, so any technique may record any of them::

    {"layers": [{                        # per layer, in execution order
        "name": str,
        # quantization
        "weight_error_hist": {"edges": [n+1 floats], "counts": [n numbers]},   # w_q - w
        "act_error_hist":    {"edges": [...], "counts": [...]},                # a_q - a
        "clip_ratio": float,              # fraction of activations clipped at calibration
        "saturation": float,              # fraction of outputs at qmin/qmax
        "channel_saturation": [float],    # per output channel -> the saturation map
        "weight_sqnr_db": float, "act_sqnr_db": float,   # signal-to-quantization-noise
        "outlier": bool,                  # optional: force an outlier call-out
        # pruning
        "sparsity": float,                # fraction of weights that are zero, 0..1
        "params_before": int, "params_after": int,
        "macs_before": int, "macs_after": int,
        # low-rank
        "rank": int, "full_rank": int, "energy": float,   # energy kept, 0..1
                                          # (aliases: "max_rank", "energy_kept")
        # clustering
        "clusters": int, "stored_bytes": int,
        # anything else scalar is listed in the stage's per-layer table
      }],
     "curves": {"train_loss": [per epoch], "val_loss": [...], "val_accuracy": [...],
                "quant_mse": [...], ...,   # any name -> list of numbers (null allowed)
                "best_epoch": int},        # optional, 0-based: a dashed line there
     # also read as curves: "history": [{"epoch": 1, "loss": ..}, ..], and any list of >= 2
     # numbers stored directly in the stats (e.g. "finetune_loss": [...])
     "rounds": [{"round": int, "sparsity": float, "accuracy": float}],  # pruning trend
     "masks": {"layer name": [[0/1 or kept fraction, ...], ...]},     # 2-D, downsampled <=128
     "sensitivity": [{"name": str, "metric_drop": float, "sqnr_db": float,
                      "agreement": float}],   # 0..1 top-1 agreement; "accuracy_drop" is an
                                              # alias of metric_drop (points)
     ...scalars (method, counts) and lists of layer names: listed as facts}

Outlier layers: error histogram RMS above 3x the median over layers (>= 3 layers) or
``"outlier": true``; SQNR more than 10 dB below the median layer; clipping or saturation of
1 % or more. Accuracy values in 0..1 are shown as percent. Record plain Python numbers and
lists (numpy/torch values are converted, anything else becomes a string and is ignored).
"""

from edgeopt.report.html import render_report, write_report
from edgeopt.report.load import RunData, RunFolderError, load_run, rebuild_report

__all__ = ["RunData", "RunFolderError", "load_run", "rebuild_report", "render_report",
           "write_report"]
