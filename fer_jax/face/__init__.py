"""Faces in photos: an MTCNN detector with five landmarks (`detector`), the crops each data
set's images were made with (`align`), a video's faces followed as tracks (`tracks`) and drawn (`draw`)."""
