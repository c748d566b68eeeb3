"""tflite_export: shrink WGSEF-trained Keras models, convert to int8 TFLite and measure them."""
