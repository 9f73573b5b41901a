r"""LHC-Net (Pecoraro et al. 2021, arXiv 2111.07224): ResNet34v2 + local multi-head channel attention.

The argument is "<data>[,stage=<stage>]" (the stage is chosen there only: the config has no stage
key); the official "modular" recipe runs five stages, each one run that starts from the best
checkpoint of the one before (`config.init_from`), keeps
the epoch with the best PublicTest accuracy (Keras EarlyStopping with restore_best_weights) and
reports PrivateTest:
  A1  ResNet34v2 + head, no LHC; from the ImageNet ResNet34v2 (qubvel
      resnet34_imagenet_1000_no_top.h5, converted); Keras Adam 1e-4 (`keras_adam`), batch 48, rotation ±30° + flip,
      patience 30;
  A2  the same network; SGD 0.01, batch 64, rotation ±10°, shifts 0.1, zoom 0.1, flip, patience 10;
  A3  the same network; SGD 0.01, batch 64, no augmentation, patience 5;
  B   LHC-Net from A3 (LHC modules freshly initialised); SGD 0.01, batch 64, patience 3;
  C   LHC-NetC from B: only the five controller scalars train, BatchNorm frozen; Keras Adam 1e-4,
      batch 32, patience 1.

  fer2013     FER2013, 48→224 bilinear in float (TF's bilinear without antialiasing: half-pixel
              centres, two taps, clamped edges — the kernel of `resize(…, 'cv2_bilinear')`),
              gray copied to 3 channels, raw 0–255 float pixels; train on Training, select on
              PublicTest, report PrivateTest with the 62-view TTA. As in the official ETL.py, the
              training images (only they) are resized on the host with TF's float32 kernel,
              floored, saved as JPEG (PIL, quality 100, 4:4:4) and read back
              (`dataset.train_jpeg_round_trip`, fer_jax/data/jpeg_round_trip.py): they reach
              train_pp at 224², where its resize is the identity; evaluation images are never
              rounded. `--config.dataset.train_jpeg_round_trip=False` trains on the float resize.
              Paper: 74.42 % PrivateTest accuracy (TTA; recalled, as Papers with Code lists it:
              which variant, B or C, gave it is not verified here, docs/methods/lhcnet.md §1.11).
  synthetic   the built-in synthetic faces at 80×80 with head counts that fit its feature maps
              (CPU demo of the stages, chained by init_from as above; not a paper setting).

  python -m fer_jax.convert --config=configs/lhcnet.py:fer2013,stage=A1 \
      --checkpoint=resnet34_imagenet_1000_no_top.h5 --workdir=converted/resnet34v2_imagenet
  python -m fer_jax.main --config=configs/lhcnet.py:fer2013,stage=A1 --workdir=workdirs/lhc_A1 \
      --config.init_from=converted/resnet34v2_imagenet
  python -m fer_jax.main --config=configs/lhcnet.py:fer2013,stage=A2 --workdir=workdirs/lhc_A2 \
      --config.init_from=workdirs/lhc_A1/best
  … A3 from A2/best, B from A3/best, C from B/best, likewise: A2…C refuse a new run without
  --config.init_from (`init_from_required`). `init_from_missing` names what B and C add to the
  checkpoint they start from (the LHC modules; the controllers).
"""

from fer_jax import config_lib

OPTIONS = {"stage": ("A1", "A2", "A3", "B", "C")}  # each option's first value is its default
RAW = "to_float()"
# Keras ImageDataGenerator settings of the official steps (float pixels, fill "nearest", bilinear).
KERAS_AUGMENT = {
    "A1": "keras_image_generator(rotation_range=30, horizontal_flip=True)",
    "A2": ("keras_image_generator(rotation_range=10, width_shift_range=0.1, height_shift_range=0.1, "
           "zoom_range=0.1, horizontal_flip=True)"),
}
# (optimizer, learning rate, batch size, early-stopping patience) of each official stage.
RECIPE = {
    "A1": ("keras_adam", 1e-4, 48, 30),
    "A2": ("sgd", 0.01, 64, 10),
    "A3": ("sgd", 0.01, 64, 5),
    "B": ("sgd", 0.01, 64, 3),
    "C": ("keras_adam", 1e-4, 32, 1),
}
# config.seed of each stage: the TensorFlow seed its official script sets (ResNet34_Train.py seeds A1 and reseeds
# before A3, LHC_Train.py B, Controller_Train.py C). A2 goes on with A1's stream in the official script; here a run of
# its own, it is seeded apart so as not to replay A1's shuffles. With one seed for all, A3 and B (same batch, no
# augmentation) would train on the same batches in the same order, which the official scripts do not.
SEEDS = {"A1": 5678, "A2": 5679, "A3": 1115, "B": 0, "C": 0}


def _fer2013(config, stage: str) -> None:
  if stage == "A1":
    config.init_from_recipe = "the ImageNet ResNet34v2 (resnet34_imagenet_1000_no_top.h5)"
  config.dataset.update(name="fer2013", class_order="fer2013", train_split="train",
                        eval_split="public_test", test_split="private_test",
                        image_size=48,  # photos given to predict are decoded at 48², resized on the device
                        train_jpeg_round_trip=True)  # ETL.py: training images only
  to_model = f"{RAW}|resize({{size}}, 'cv2_bilinear')|gray_to_rgb()"
  config.input.update(size=224, channels=3, train_pp="|".join(filter(None, (to_model, KERAS_AUGMENT.get(stage, "")))),
                      eval_pp=to_model)


def _synthetic(config, stage: str) -> None:
  config.dataset.update(name="synthetic", class_order="fer2013", train_split="train",
                        eval_split="test", test_split="test")
  # Heads dividing the 20², 10², 5², 3² maps at 80 px and the 8², 4², 2², 1² maps at 32 px
  # (the tests' size): bands of 5, 5 and 5 rows, then whole maps; E ≈ P / 2 at 80 px.
  config.model.update(lhc_heads=(4, 4, 2, 1, 1), lhc_embed_dims=(50, 50, 25, 12, 5))
  flip = "flip()|" if stage in ("A1", "A2") else ""
  config.input.update(size=80, channels=3, train_pp=f"resize({{size}})|{flip}{RAW}",
                      eval_pp=f"resize({{size}})|{RAW}")
  config.batch_size = min(config.batch_size, 32)
  config.eval_batch_size = 100
  config.num_epochs = 2
  config.log_every_steps = 20


# The data sets: each one's settings for a stage, applied over those every data set shares (get_config).
SETTINGS = {"fer2013": _fer2013, "synthetic": _synthetic}
DATA_SETS = tuple(SETTINGS)


def get_config(arg: str = "fer2013"):
  parsed = config_lib.parse_arg(arg, __file__, SETTINGS, **OPTIONS)
  data, stage = parsed.data, parsed.stage
  config = config_lib.base_config()
  config.model.update(
      name="lhcnet", num_classes=7,
      use_lhc=stage in ("B", "C"),
      lhc_heads=(8, 8, 7, 7, 1), lhc_embed_dims=(196, 196, 56, 14, 25),
      pool_size=3, kernel_size=3, norm_c=1.0,
      controller=stage == "C", controller_init=(0.0, 0.0, 0.0, -1.0, -0.5),
      freeze_batch_norm=stage == "C",
      head_widths=(4096, 1024), dropout_rate=0.4)

  optimizer, lr, batch_size, patience = RECIPE[stage]
  config.optimizer.update(name=optimizer, lr=lr, momentum=0.0, schedule="constant", weight_decay=0.0,
                          b1=0.9, b2=0.999, eps=1e-7,           # Keras Adam defaults
                          trainable="controller" if stage == "C" else "")
  config.batch_size = batch_size
  config.seed = SEEDS[stage]
  config.eval_batch_size = 256
  config.num_epochs = 300
  # Early stopping and model selection (Keras EarlyStopping + ModelCheckpoint(save_best_only)).
  config.select_metric = "accuracy"            # measured on dataset.eval_split after every epoch
  config.early_stopping_patience = patience    # stop after this many epochs without a strict gain
  config.restore_best = True                   # finish (and test) with the best epoch's weights
  config.eval.tta = "lhc62"                    # for the final test-split evaluation only
  # A2…C fine-tune the previous stage's best checkpoint: a new run without --config.init_from stops before any work.
  config.init_from_required = stage != "A1"
  # Variables that the previous stage's checkpoint lacks and that keep their fresh initialisation.
  config.init_from_missing = {"B": r"^params/lhc\d/", "C": r"^params/lhc\d/controller$"}.get(stage, "")

  SETTINGS[data](config, stage)
  return config
