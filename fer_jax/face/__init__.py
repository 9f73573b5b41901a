"""Faces in photos: an MTCNN detector with five landmarks (`detector`) and the crops each data
set's images were made with (`align`)."""
