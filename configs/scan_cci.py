r"""SCAN-CCI (Gera & Balasubramanian 2021, arXiv 2007.10298; docs/methods/scan_cci.md §4).

ResNet-50 to layer3, spatio-channel attention over 25 local regions + complementary context.
Every data set is mapped to AffectNet's class order, as in the official code. SGD, momentum
0.9; the trunk trains at 1e-4 and the heads at `optimizer.lr`; every rate × 0.95 per epoch.
The official scripts keep the best epoch measured on the evaluation split. They also train every
epoch after the first with the model in inference mode: `train()` never calls `.train()` while
`validate()` calls `.eval()` on the trunk and both branches and never undoes it (main_rafdb.py,
main_ferplus.py, main_affectnet.py, main_sfew.py), so BatchNorm runs on, and keeps, its running
statistics from epoch 2 on. `inference_mode_from_epoch=2` reproduces that;
--config.inference_mode_from_epoch=0 trains every epoch in training mode.

Arguments pick the data set:
  rafdb       RAF-DB basic, 7 classes, one SCAN unit shared by the 25 regions, heads lr 0.01.
              The report adds the occlusion, pose > 30° and pose > 45° test subsets (evaluators
              occlusion, pose30, pose45) where the set was prepared with their list files.
  ferplus     FERPlus majority-vote labels, 8 classes, 25 separate SCAN units, heads lr 0.01;
              trains on train+validation merged, as the official script does.
  affectnet7  AffectNet, 7 classes, separate units, heads lr 0.001; as the official loader,
              only the first 20,000 training images of each class (annotation order: the original
              release's training.csv order; the later release's id order keeps another 20,000).
  affectnet8  AffectNet, 8 classes, otherwise as affectnet7.
              The official loader reads the authors' own aligned faces (main_affectnet.py's default
              Manually_Annotated_Images_aligned/, never released), whole. The later "4 GB"
              release's faces are cropped already; from the original release, whose images are
              whole photos, add --config.dataset.name=affectnet/classes8_facecrop, which crops
              to its face boxes: the closest to the authors' faces that can be had.
  sfew        SFEW 2.0, 7 classes, separate units, fine-tuned from a 7-class checkpoint given
              by --config.init_from (training stops with an error without it); no ColorJitter,
              effective-number class weights (β 0.9999) instead of class-balanced sampling,
              weight decay 1e-4. The class counts come from the training split unless
              --config.loss.class_counts gives them (AffectNet order). main_sfew.py also loads
              the optimiser state (group rates, weight decay, momentum buffers) of the
              AffectNet+RAF-DB checkpoint it starts from; ours starts a fresh optimiser with
              these rates (set optimizer.lr / lr_groups / weight_decay to the checkpoint's if
              known; the momentum buffers have no flag).
  synthetic   the built-in synthetic faces resized to 64×64 (an 8×8 layer2 map: 5 regions,
              bottom-strip quirk included), shared unit, every parameter at lr 0.01 since there
              is no pretrained trunk. A wiring check, not a paper setting, and slow on a CPU
              (2.3 img/s measured on 2 shared cores): accuracy was not measured.

The paper's runs start from the VGGFace2 ResNet-50 (SCAN-CCI's README; without it a run warns):
  python -m fer_jax.convert --config=configs/scan_cci.py:rafdb --checkpoint=vgg_msceleb_resnet50_ft_weight.pkl \
      --workdir=converted/scan_init
  python -m fer_jax.main --config=configs/scan_cci.py:rafdb --workdir=workdirs/scan_cci_rafdb \
      --config.init_from=converted/scan_init
  python -m fer_jax.main --config=configs/scan_cci.py:sfew --config.init_from=CKPT --workdir=workdirs/scan_cci_sfew
"""

import functools

from fer_jax import config_lib

HALF = "normalize('half')"
TRUNK_LR = 1e-4
VGGFACE2 = "the VGGFace2 ResNet-50 (vgg_msceleb_resnet50_ft_weight.pkl)"


def _pipelines(color_jitter: bool) -> tuple[str, str]:
  """Official order: flip, ColorJitter, resize, normalise; "{size}" is config.input.size."""
  jitter = "color_jitter(0.4, 0.3, 0.25, 0.05)|" if color_jitter else ""
  return (f"gray_to_rgb()|flip()|{jitter}resize({{size}})|{HALF}", f"gray_to_rgb()|resize({{size}})|{HALF}")


def _optimizer(config, head_lr: float, weight_decay: float) -> None:
  config.optimizer.update(name="sgd", lr=head_lr, momentum=0.9, weight_decay=weight_decay,
                          schedule="exponential", gamma=0.95,
                          lr_groups=((r"^trunk/", TRUNK_LR / head_lr),))


def _rafdb(config) -> None:
  config.init_from_recipe = VGGFACE2
  config.model.shared_local_units = True
  config.dataset.update(name="rafdb", class_order="affectnet7", image_size=100)
  config.evals = config_lib.subset_evaluators()


def _ferplus(config) -> None:
  config.init_from_recipe = VGGFACE2
  config.model.num_classes = 8
  config.dataset.update(name="ferplus", class_order="affectnet8", train_split="train+validation",
                        image_size=48)  # photos to predict: decoded at 48², as stored
  config.evals = config_lib.subset_evaluators()


def _affectnet(config, num_classes: int) -> None:
  config.init_from_recipe = VGGFACE2
  config.model.num_classes = num_classes
  config.dataset.update(name="affectnet", class_order=f"affectnet{num_classes}", eval_split="validation",
                        max_per_class=20_000, image_size=224)  # images of many sizes, decoded at 224
  config.evals = config_lib.subset_evaluators("validation")
  _optimizer(config, head_lr=0.001, weight_decay=1e-3)


def _sfew(config) -> None:  # fine-tunes a SCAN-CCI checkpoint: no init_from_recipe
  config.dataset.update(name="sfew", class_order="affectnet7", eval_split="validation",
                        sampler="uniform", image_size=224)  # images of many sizes, decoded at 224
  config.loss.class_weights = "effective_number"
  config.input.train_pp, config.input.eval_pp = _pipelines(color_jitter=False)
  _optimizer(config, head_lr=0.001, weight_decay=1e-4)
  config.init_from_required = True  # a new run without --config.init_from stops before any work


def _synthetic(config) -> None:
  config.model.shared_local_units = True
  config.dataset.update(name="synthetic", class_order="affectnet7")
  config.input.size = 64
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = 2
  config.optimizer.lr_groups = ()
  config.log_every_steps = 20


# The arguments: each data set's settings, applied over those every data set shares (get_config).
SETTINGS = {"rafdb": _rafdb, "ferplus": _ferplus, "affectnet7": functools.partial(_affectnet, num_classes=7),
            "affectnet8": functools.partial(_affectnet, num_classes=8), "sfew": _sfew, "synthetic": _synthetic}
DATA_SETS = tuple(SETTINGS)


def get_config(arg: str = "rafdb"):
  data = config_lib.parse_arg(arg, __file__, SETTINGS).data
  config = config_lib.base_config()
  config.model.update(name="scan_cci", num_classes=7, shared_local_units=False,
                      bottom_strip_quirk=True)
  config.loss.update(attention_weight=0.2, class_weights="", effective_number_beta=0.9999,
                     class_counts=())
  train_pp, eval_pp = _pipelines(color_jitter=True)
  config.input.update(size=224, train_pp=train_pp, eval_pp=eval_pp)
  config.dataset.update(sampler="class_balanced")
  config.batch_size = 64
  config.eval_batch_size = 64
  config.num_epochs = 60
  _optimizer(config, head_lr=0.01, weight_decay=1e-3)
  # The official script keeps the epoch with the best accuracy on the evaluated (test) split.
  config.update(select_metric="accuracy", restore_best=True)
  config.inference_mode_from_epoch = 2  # the official scripts' mode after the first validation
  SETTINGS[data](config)
  return config
