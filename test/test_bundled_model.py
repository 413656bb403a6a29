"""The bundled default model on freshly generated held-out sequences.

The sequences come from a generator seed never used for training or for the README's figures
(training used seeds 1 and 2, validation 9001, the README's held-out test 777), so this
re-checks the model's central claim, that motion helps, on data it has never seen.
"""
import json

import pytest

from flow2seg_ros.data.synth import generate
from flow2seg_ros.evaluate import evaluate_sequences, find_sequences
from flow2seg_ros.pipeline import FramePipeline, PipelineConfig
from flow2seg_ros.weights import bundled_model_path, card_path

# Floors on these few short sequences: the README's held-out figures (65-67 % fused, +4.4 to
# +6.5 points over the image head) minus a margin for the small sample (4 sequences x 8 frames;
# with the current model this seed gives 64.9 % fused and 60.3 % for the image head, so the
# margins are 6.9 and 2.6 points).
FUSED_MIOU_FLOOR = 0.58
MOTION_GAIN_FLOOR = 0.02
SEED = 31337


@pytest.fixture(scope='module')
def held_out(tmp_path_factory):
    root = tmp_path_factory.mktemp('held_out')
    generate(root, sequences=4, frames=8, size=(512, 256), seed=SEED, split='test',
             progress=False)
    return root


def test_bundled_model_card_says_how_it_was_made():
    card = json.loads(card_path(bundled_model_path()).read_text())
    assert card['preset'] == 'lite'
    assert card['flow']['method'] == 'dis' and card['flow']['scale'] > 0
    assert card['flow']['cuda']['method'] == 'learned'  # trained on both flows
    assert card['input_size'] == [256, 512]
    assert 'command' in card['training'] and 'seed' in card['training']
    assert bundled_model_path().stat().st_size <= 20 * 1024 * 1024


def test_bundled_model_fused_beats_its_image_head_on_fresh_sequences(held_out):
    pipeline = FramePipeline(PipelineConfig(device='cpu'))
    dataset = find_sequences(held_out, 'test', pipeline.classes)
    summary = evaluate_sequences(pipeline, dataset, fps=17.0, progress=False)
    heads = summary['heads']
    fused, image = heads['fused']['miou'], heads['image']['miou']
    assert fused >= FUSED_MIOU_FLOOR, summary['table']
    assert fused >= image + MOTION_GAIN_FLOOR, summary['table']
