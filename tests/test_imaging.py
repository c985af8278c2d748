from PIL import Image

from app.imaging import center_crop_box, fit_box, resize_and_crop, resize_and_pad


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
