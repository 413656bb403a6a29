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

# Floors on these few short sequences: the README's held-out figures (66-67 % fused, +4.9 to
# +6.8 points over the image head; temporal consistency +7.9 to +8.6 points over the image head
# with the default temporal smoothing) minus a margin for the small sample (4 sequences x 8
# frames; with the current model and the default smoothing this seed gives 64.5 % fused and
# 60.3 % for the image head, TC 80.2 against 72.4 %, so the margins are 6.5, 2.2 and 3.8 points).
FUSED_MIOU_FLOOR = 0.58
MOTION_GAIN_FLOOR = 0.02
STEADIER_FLOOR = 0.04
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
    """More accurate and steadier than the image path alone, with the node's defaults."""
    pipeline = FramePipeline(PipelineConfig(device='cpu'))
    dataset = find_sequences(held_out, 'test', pipeline.classes)
    summary = evaluate_sequences(pipeline, dataset, fps=17.0, progress=False)
    heads = summary['heads']
    fused, image = heads['fused']['miou'], heads['image']['miou']
    assert fused >= FUSED_MIOU_FLOOR, summary['table']
    assert fused >= image + MOTION_GAIN_FLOOR, summary['table']
    # steadier with motion: the fused labels (temporal smoothing along the flow) against the
    # image path's, frame to frame
    assert heads['fused']['tc'] >= heads['image']['tc'] + STEADIER_FLOOR, summary['table']
