"""Class sets: the Cityscapes table from cityscapesscripts, custom lists, look-up tables."""
import json

import numpy as np
import pytest

from flow2seg_ros.classes import cityscapes_classes, class_set_json, ClassSet, load_class_set


def test_cityscapes_has_the_19_train_classes_with_official_ids_and_colours():
    cs = cityscapes_classes()
    assert cs.num_classes == 19
    assert cs.names[0] == 'road' and cs.label_ids[0] == 7 and cs.colors[0] == (128, 64, 128)
    assert cs.names[13] == 'car' and cs.label_ids[13] == 26
    assert cs.names[18] == 'bicycle' and cs.label_ids[18] == 33


def test_label_and_train_luts_are_inverse_on_classes_and_ignore_the_rest():
    cs = cityscapes_classes()
    to_train, to_label = cs.label_to_train_lut(), cs.train_to_label_lut()
    for train_id, label_id in enumerate(cs.label_ids):
        assert to_train[label_id] == train_id
        assert to_label[train_id] == label_id
    assert to_train[0] == 255 and to_train[1] == 255 and to_train[255] == 255  # void ids


def test_palette_colours_classes_and_leaves_ignore_black():
    cs = cityscapes_classes()
    pal = cs.palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert tuple(pal[0]) == cs.colors[0] and tuple(pal[255]) == (0, 0, 0)


def test_round_trip_through_dict_and_json():
    cs = cityscapes_classes()
    assert ClassSet.from_dict(json.loads(json.dumps(cs.to_dict()))) == cs
    table = json.loads(class_set_json(cs))
    assert table['classes'][13] == {'id': 13, 'name': 'car', 'color': [0, 0, 142]}
    assert table['ignore_index'] == 255


def test_custom_class_list_from_yaml(tmp_path):
    f = tmp_path / 'classes.yaml'
    f.write_text('classes:\n  - {name: floor, color: [10, 20, 30]}\n'
                 '  - {name: obstacle, color: [200, 0, 0]}\n')
    cs = load_class_set(f)
    assert cs.names == ('floor', 'obstacle') and cs.label_ids is None
    assert cs.label_to_train_lut()[1] == 1 and cs.label_to_train_lut()[2] == 255


@pytest.mark.parametrize('text, message', [
    ('- {name: a}\n', 'color'),
    ('- {name: a, color: [1, 2, 3], id: 4}\n- {name: b, color: [1, 2, 3]}\n', 'every class'),
    ('- {name: a, color: [1, 2, 300]}\n', '0..255'),
    ('[]\n', 'non-empty'),
])
def test_bad_class_lists_name_the_file_and_the_problem(tmp_path, text, message):
    f = tmp_path / 'bad.yaml'
    f.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_class_set(f)
    assert str(f) in str(err.value)


def test_missing_class_list_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.yaml'):
        load_class_set(tmp_path / 'nope.yaml')
