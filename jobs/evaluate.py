"""Evaluate a CLIPSynth model (or CLIPRetriever, or the HiFi-GAN reconstructions) by the paper's protocol.

    python jobs/evaluate.py --model models:/clipsynth-music/1 --data s3://bucket/music --dataset music
    python jobs/evaluate.py --model BUNDLE_DIR --data DATA --queries both --steps 50 --fad-backbone vggish
    python jobs/evaluate.py --model BUNDLE_DIR --data DATA --retriever
    ray job submit --working-dir . -- python jobs/evaluate.py --model ... --data ...

512 samples per query type (text: "a photo of playing {label}" on MUSIC, "a photo of {label}" on VGG-Sound;
image: random test frames), generated on Ray actors (GPU when present), scored against the whole test split.
Every metric is named for the backbone that computes it:

  fad         FAD as published (Google's FAD, frechet_audio_distance, AudioLDM): VGGish's 128-d embeddings
              BEFORE the final ReLU, on 16 kHz audio. Weights: the PyTorch VGGish port's release file
              vggish-10086976.pth, from
              https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth
              given by --fad-backbone /path/to/vggish-10086976.pth or $CLIPSYNTH_VGGISH_WEIGHTS, or put at
              ~/.cache/clipsynth/ or ~/.cache/torch/hub/checkpoints/ (read with torch.load(weights_only=True);
              nothing is downloaded). --fad-backbone vggish-relu takes the port's post-ReLU output instead.
  fad_melclf  when no VGGish weights are here (--fad-backbone auto, the default): the same distance on the
              mel classifier's embedding of the audio re-analysed into the dataset's mel. Trained on the data
              at hand, so it means something offline; comparable only with runs of the same classifier.
  fid         Inception FID on the mel spectrograms rendered as images, as the paper: pytorch-fid's FID
              Inception-v3 (pool3, 2048-d) on 299x299 resizes of 8-bit images of 64-frame mel windows.
              Weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth, from
              https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
              given by --fid-backbone PATH or $CLIPSYNTH_FID_INCEPTION_WEIGHTS (or in the same cache
              directories). Without the file, fid is not computed and the run's tag fid_absent says why.
  fd_melclf   the Frechet distance of the mel classifier's features (--mel-classifier; train it with
              jobs/train_mel_classifier.py) of generated mel windows against the test mels' windows.
  relevance   the mel classifier's accuracy on the label each sample was asked for.

Also the vocoder's reconstruction distance (<fad metric>_hifigan_recon) and, with --queries both, the
modality gap of each metric. Random backbones (tiny-random) exist for unit tests only; such runs are tagged
and jobs/compare.py never tables them beside real ones. Results go to an MLflow evaluation run linked to the
model's training run; jobs/compare.py makes Table 1 from them.
"""

import sys

from clipsynth_platform.evaluation.runner import EvalConfig, run_evaluation
from clipsynth_platform.runtime.console import open_console
from clipsynth_platform.runtime.logs import get_logger
from clipsynth_platform.runtime.options import build_parser, parse_config
from clipsynth_platform.tracking.registry import set_alias


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(EvalConfig, __doc__)
    parser.add_argument(
        "--promote-alias",
        default="",
        help="once the evaluation has run, point this alias (e.g. champion) of the registered model at the "
        "evaluated version (--model models:/NAME/VERSION or models:/NAME@ALIAS); serve it as models:/NAME@ALIAS",
    )
    config = parse_config(EvalConfig, argv, __doc__, parser=parser)
    promote_alias = parser.parse_args(argv).promote_alias
    open_console("evaluate")
    log = get_logger("evaluate")
    try:
        results = run_evaluation(config)
    except (ValueError, FileNotFoundError) as exc:  # bad input: missing split, weights, bundle; wrong CLIP
        print(f"[evaluate] error: {exc}", file=sys.stderr)
        return 2
    if results and promote_alias:
        log.info("%s is now %s", config.model, set_alias(config.model, promote_alias))
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
