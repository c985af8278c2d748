import numpy as np
from PIL import Image

from app.images.imaging import (
    blur_mask,
    center_crop_box,
    crop_padded,
    feather_out,
    fit_box,
    model_region,
    resize_and_crop,
    resize_and_pad,
)


def test_crop_box_wider_than_target_keeps_full_height():
    # 1000x1000 to 3:4 -> width 1000*768//1024 = 750, centred: (1000-750)//2 = 125
    assert center_crop_box((1000, 1000), (768, 1024)) == (125, 0, 875, 1000)


def test_crop_box_taller_than_target_keeps_full_width():
    # 300x500 to 3:4 -> height 300*1024//768 = 400, top (500-400)//2 = 50
    assert center_crop_box((300, 500), (768, 1024)) == (0, 50, 300, 450)


def test_crop_box_floors_odd_margins():
    # 303x400: width 400*768//1024 = 300, margin 3 -> left 3//2 = 1, right (303+300)//2 = 301
    assert center_crop_box((303, 400), (768, 1024)) == (1, 0, 301, 400)


def test_crop_box_of_exact_aspect_is_whole_image():
    assert center_crop_box((384, 512), (768, 1024)) == (0, 0, 384, 512)


def test_fit_box_wide_garment_is_centred_vertically():
    # 200x100 into 768x1024 -> 768 x 100*768//200 = 384, top (1024-384)//2 = 320
    assert fit_box((200, 100), (768, 1024)) == (0, 320, 768, 704)


def test_fit_box_tall_garment_is_centred_horizontally():
    # 100x400 -> 100*1024//400 = 256 wide, left (768-256)//2 = 256
    assert fit_box((100, 400), (768, 1024)) == (256, 0, 512, 1024)


def test_resize_and_crop_takes_the_centre():
    image = Image.new("RGB", (400, 400), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 50, 400))  # a red band that the 3:4 crop (50..350) removes
    out = resize_and_crop(image, (48, 64))
    assert out.size == (48, 64)
    assert all(out.getpixel((x, 32))[0] < 10 for x in range(48))


def test_resize_and_pad_fills_with_white_outside_the_fit_box():
    out = resize_and_pad(Image.new("RGB", (200, 100), (10, 20, 30)), (96, 128))
    assert out.size == (96, 128) and out.mode == "RGB"
    left, top, right, bottom = fit_box((200, 100), (96, 128))
    assert out.getpixel((48, top - 1)) == (255, 255, 255)
    assert out.getpixel((48, bottom)) == (255, 255, 255)
    assert out.getpixel((48, (top + bottom) // 2)) == (10, 20, 30)


# -- the model's region: it follows the mask ----------------------------------------------------------

def test_region_is_the_centre_crop_when_the_mask_is_inside_it():
    assert model_region((1000, 1000), (768, 1024), (300, 300, 600, 700)) == (125, 0, 875, 1000)
    assert model_region((1000, 1000), (768, 1024), None) == (125, 0, 875, 1000)


def test_region_moves_the_least_to_hold_a_mask_off_centre():
    # a 900x600 photo: the centre crop is 450 wide (225..675); a mask at the left edge moves it to 0
    assert model_region((900, 600), (768, 1024), (0, 100, 80, 500)) == (0, 0, 450, 600)
    # a mask just past the crop's right edge moves it only as far as needed (with the margin)
    assert model_region((900, 600), (768, 1024), (500, 100, 700, 500), margin=10) == (260, 0, 710, 600)
    # portraits: the top and bottom rows
    assert model_region((600, 900), (768, 1024), (100, 0, 500, 30)) == (0, 0, 600, 800)
    assert model_region((600, 900), (768, 1024), (100, 870, 500, 900)) == (0, 100, 600, 900)


def test_region_grows_past_the_photo_when_the_mask_is_wider_than_any_crop():
    # 3000x2000 with a mask 2400 wide: no 3:4 box inside the photo holds it; a 2400x3200 one does
    box = model_region((3000, 2000), (768, 1024), (300, 200, 2700, 1900))
    assert box == (300, -600, 2700, 2600)
    assert (box[2] - box[0]) * 4 == (box[3] - box[1]) * 3  # exactly the model's aspect


def test_crop_padded_repeats_the_edges_of_a_photo_and_blacks_out_a_mask():
    photo = Image.new("RGB", (4, 2), (10, 20, 30))
    photo.putpixel((0, 0), (200, 0, 0))
    out = crop_padded(photo, (-2, -1, 4, 3))
    assert out.size == (6, 4)
    assert out.getpixel((0, 0)) == (200, 0, 0) and out.getpixel((2, 1)) == (200, 0, 0)
    assert out.getpixel((5, 3)) == (10, 20, 30)
    mask = Image.new("L", (4, 2), 255)
    padded = crop_padded(mask, (-2, -1, 4, 3), fill="black")
    assert padded.getpixel((0, 0)) == 0 and padded.getpixel((2, 1)) == 255
    assert crop_padded(photo, (1, 0, 3, 2)).tobytes() == photo.crop((1, 0, 3, 2)).tobytes()


def test_the_blur_never_removes_a_painted_pixel():
    mask = Image.new("L", (200, 200), 0)
    mask.paste(255, (50, 20, 60, 180))  # a 10 px strap: the old blur (9) took it away entirely
    mask.putpixel((150, 100), 255)  # a single painted pixel
    for radius in (0, 3, 9, 30):
        out = np.asarray(blur_mask(mask, radius)) >= 128  # as the pipeline binarises it
        painted = np.asarray(mask) >= 128
        assert out[painted].all(), radius
    holey = Image.new("L", (100, 100), 0)
    holey.paste(255, (20, 20, 80, 80))
    holey.putpixel((50, 50), 0)  # a pinhole: the blur still fills it
    assert blur_mask(holey, 3).getpixel((50, 50)) >= 128
    assert blur_mask(holey, 3).getpixel((5, 5)) < 128  # and does not reach far outside


def test_feather_out_is_full_on_the_mask_and_fades_outside():
    mask = Image.new("L", (100, 100), 0)
    mask.paste(255, (48, 10, 52, 90))  # a 4 px line
    alpha = np.asarray(feather_out(mask, 8))
    assert (alpha[10:90, 48:52] == 255).all()
    assert 0 < alpha[50, 60] < 255 and alpha[50, 95] < alpha[50, 60]
